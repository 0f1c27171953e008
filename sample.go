//go:build linux

package echo

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// Sample is one batch and the metrics taken when it was handed out.
//
// Batch and Leaves view the server's ring memory: they are valid until the
// next Sample call on the same server (or the next step of a Batches loop).
// Close does not unmap a batch the consumer still holds; the next Sample
// (which returns ErrClosed) does. Take a Copy to keep a batch longer. The
// server owns the tree and the Leaves slice too and restores them on every
// call, so a caller that edits them only spoils its own current view.
//
// Leaf and View find one leaf by its path; the zero Sample (what a Batches
// loop yields with an error) holds no batch.
type Sample struct {
	// Batch is a tree shaped like the server's example whose leaves have
	// shape (batchSize, *leaf.shape).
	Batch any
	// Leaves are Batch's leaves in flatten order.
	Leaves []pytree.Array
	// Info is a snapshot of the server's metrics.
	Info SampleInfo

	spec *pytree.Spec // the batch spec, for Copy
}

// Copy returns a deep copy of the sample whose arrays live in fresh Go
// memory and stay valid for as long as the caller keeps them.
func (s Sample) Copy() Sample {
	leaves := make([]pytree.Array, len(s.Leaves))
	for i, a := range s.Leaves {
		leaves[i] = a.Copy()
	}
	batch, err := s.spec.Unflatten(leaves)
	if err != nil {
		// Leaves always has the spec's leaf count: a failure is a bug.
		panic("echo: copying a sample: " + err.Error())
	}
	return Sample{Batch: batch, Leaves: leaves, Info: s.Info, spec: s.spec}
}

// ErrUnknownLeaf is returned (wrapped, with the path asked for and the
// paths the batch has) by Sample.Leaf and View for a path the batch does
// not have.
var ErrUnknownLeaf = errors.New("echo: unknown leaf")

// Leaf returns the batch's leaf at path, an array of shape (batchSize,
// *leaf.shape) viewing the same memory as Batch. A path names a leaf as
// the server's spec does (Server.Spec().Leaves()[i].Path): dict keys and
// list or tuple indices joined by "/", such as "obs", "obs/radars" or
// "a/0"; a batch whose example is a single array has the one path "".
// Where dict keys themselves hold "/" two leaves may share a path; the
// first in flatten order is found.
//
// A path the batch does not have returns an error wrapping ErrUnknownLeaf
// that names the known paths. Leaf allocates nothing when it succeeds.
func (s Sample) Leaf(path string) (pytree.Array, error) {
	if s.spec == nil {
		return pytree.Array{}, fmt.Errorf("%w: %q: the Sample holds no batch", ErrUnknownLeaf, path)
	}
	leaves := s.spec.Leaves()
	for i := range leaves {
		if leaves[i].Path == path && i < len(s.Leaves) {
			return s.Leaves[i], nil
		}
	}
	known := make([]string, len(leaves))
	for i, l := range leaves {
		known[i] = strconv.Quote(l.Path)
	}
	return pytree.Array{}, fmt.Errorf("%w: %q (known: %s)", ErrUnknownLeaf, path, strings.Join(known, ", "))
}

// View returns the elements of the batch's leaf at path (see Sample.Leaf)
// as a []T of batchSize·prod(leaf.shape) elements in row-major order,
// without copying: sample i of the batch is the i-th run of
// prod(leaf.shape) elements. Like every view of a batch, it is valid until
// the next Sample call (unless the sample is a Copy).
//
//	obs, err := echo.View[float32](smp, "obs")
//
// A path the batch does not have returns an error wrapping ErrUnknownLeaf;
// a leaf whose dtype is not T's (see pytree.DTypeOf) one wrapping
// pytree.ErrDType that names both. View allocates nothing when it succeeds.
func View[T pytree.Element](s Sample, path string) ([]T, error) {
	a, err := s.Leaf(path)
	if err != nil {
		return nil, err
	}
	v, err := pytree.View[T](a)
	if err != nil {
		return nil, fmt.Errorf("echo: leaf %q: %w", path, err)
	}
	return v, nil
}

// SampleInfo is a snapshot of backpressure metrics, taken per batch. Every
// count is an int64, so fields compare and subtract without conversions;
// the totals count from NewServer and never wrap in practice.
type SampleInfo struct {
	// StoreSize is the number of samples written to the ring and not yet
	// handed out, after this batch was taken. It counts the samples of
	// batches not yet complete: they come out only once their batch
	// fills, and those still in the ring when the server closes never do.
	StoreSize int64
	// ActiveConnections is the number of connected network producers.
	ActiveConnections int64
	// RefusedConnections counts connections closed before they were
	// served: at accept because WithMaxConnections were open, or in
	// authentication (WithSharedSecret).
	RefusedConnections int64
	// AuthFailures counts the connections refused in authentication: a
	// wrong proof, no answer within the timeout, or leaving first.
	AuthFailures int64
	// StalledConnections counts the connections dropped for holding a
	// partial sample without sending more of it for the stall timeout
	// (WithStallTimeout).
	StalledConnections int64
	// QueueDepthSum is the number of samples waiting in producer queues
	// (and socket buffers), summed.
	QueueDepthSum int64
	// QueueDepthMax is the deepest single producer queue; for a
	// connection, the most whole samples it had waiting at a worker's look
	// since the previous batch.
	QueueDepthMax int64
	// PushBlockedCount counts the times a sample had to wait: a Submit or
	// direct producer that found the ring full, a queued producer that
	// found all its buffers queued, a worker that found the ring full.
	PushBlockedCount int64
	// SamplesInsertedTotal counts samples written to the ring since start.
	SamplesInsertedTotal int64
	// NotifyCount counts consumer wake-ups: one per completed batch.
	NotifyCount int64

	// Detailed reports whether the fields below are measured
	// (WithDetailedMetrics); they read zero otherwise.
	Detailed bool
	// CASSuccessTotal counts successful slot reservations.
	CASSuccessTotal int64
	// CASFailureTotal counts reservation CASes lost to another writer.
	CASFailureTotal int64
	// ReservationRetriesTotal counts reservations retried after finding the
	// ring full.
	ReservationRetriesTotal int64
	// DrainRound is the time of one ingress worker round.
	DrainRound Histogram
	// Memcpy is the time to copy one reservation's samples into the ring.
	Memcpy Histogram
	// QueueDwell is the time a sample waited in a producer queue.
	QueueDwell Histogram
}

// Histogram summarises durations recorded since the last ResetHistograms.
type Histogram struct {
	Count          int64
	Min, Max, Mean time.Duration
	P50, P90, P99  time.Duration
}
