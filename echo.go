// Package echo moves reinforcement-learning samples from many producers into
// fixed-size training batches.
//
// A learner builds a [Server] from an example sample (a pytree: nested
// map[string]any, []any, [pytree.Tuple] and nil, with [pytree.Array] leaves)
// and a batch size. Actors hand it samples that match the example exactly:
// over TCP or Unix sockets with a [Client] (or echo's own Python TcpClient:
// the wire protocol is echo's version 1), or in process with a [Producer]
// or [Server.Submit]. An actor that produces a sample one step at a time
// can assemble it with a [TrajectoryAccumulator].
//
// # Taking batches
//
// The learner calls [Server.Sample], or ranges over [Server.Batches], and
// gets a batch whose every leaf is one contiguous array of shape
// (batchSize, *leaf.shape), with no copy:
//
//	for smp, err := range srv.Batches(ctx) {
//		if err != nil {
//			break // errors.Is(err, echo.ErrClosed) after Close
//		}
//		obs, err := echo.View[float32](smp, "obs") // batchSize·8 floats
//		...
//	}
//
// [Sample.Batch] is the batch as a tree shaped like the example,
// [Sample.Leaves] its leaves in flatten order, [Sample.Leaf] and [View]
// one leaf by its path, and [Sample.Info] the server's metrics when the
// batch was taken ([SampleInfo]). Batches are whole: a batch comes out once
// batchSize samples have filled it, so the samples of a batch still
// unfinished when the server closes never come out.
//
// # Lifetime of batch views
//
// The arrays of a [Sample] view ring memory that the server reuses: they are
// valid until the next call of [Server.Sample] (or the next step of a
// [Server.Batches] loop). [Server.Close] leaves a batch the learner still
// holds mapped until its next Sample, which returns ErrClosed and unmaps the
// ring. Use [Sample.Copy], or Batches with [Copied], to keep a batch longer.
//
// # Cost
//
// Submit, Producer.Send, Client.Send and Sample allocate nothing once
// warm, with context.Background() as with a cancellable context. A sample
// is copied into the ring once: from the caller's arrays (Submit, producers
// of large samples) or from the socket (clients); producers of small
// samples copy it into buffers of their own first, so that Send returns at
// once. NewServer maps and faults in the whole ring, NumBuffers·batchSize
// samples, before it returns.
//
// # Platforms
//
// The server side ([Server], [Producer], [Sample], the options and wait
// strategies) runs on Linux only: it is built on epoll and mmap. The actor
// side ([Client], [TrajectoryAccumulator], and packages pytree and wire)
// builds and is tested on Linux, macOS and Windows, so actors may run
// anywhere and feed a Linux learner over TCP.
//
// # Cancellation
//
// Every call that can block takes a context: [Dial], [Client.Send],
// [Client.SendBatch], [Client.Wait], [Server.Submit], [Producer.Send] and
// [Server.Sample]. A send whose context ends before any byte of its sample
// is handed over returns an error wrapping the context's error, sends
// nothing and leaves its connection or producer usable; see each method for
// the rest.
//
// # Security
//
// A server listens only where [WithTCP] or [WithUnix] say. Any peer that
// reaches it may send samples, as with echo, unless [WithSharedSecret] makes
// every connection prove it holds a secret first (an HMAC-SHA256
// challenge–response in both directions; the secret never crosses the
// wire); Go clients answer with [WithClientSecret].
package echo

import (
	"errors"
	"fmt"
)

// Errors of both sides. The server's own (ErrClosed, ErrRingTooLarge,
// ErrStarted) are in server.go, the client's in client.go.
var (
	// ErrSpecMismatch is returned (wrapped) for a tree whose structure,
	// dtype or shape differs from the example: by Submit, Producer.Send,
	// Client.Send and SendBatch (which also name the tree's index), and
	// TrajectoryAccumulator.Add, before anything is written; and by Dial
	// when the server's handshake describes other samples than the
	// client's example. The error names the first differing leaf and both
	// values, the caller's first, in the same words on every path:
	//
	//	echo: spec mismatch: obs/radars: shape [8 6], expected [8 5]
	//
	// and wraps the *pytree.MismatchError that says so, for callers that
	// want the path with errors.As. Dial can compare only what the version
	// 1 handshake carries: leaf counts, dtype sizes and shapes.
	ErrSpecMismatch = errors.New("echo: spec mismatch")
	// ErrBadExample is returned by NewServer, Dial and
	// NewTrajectoryAccumulator for an example that cannot describe
	// samples: no leaves, or a leaf that is not a pytree.Array.
	ErrBadExample = errors.New("echo: bad example")
	// ErrBadConfig is returned by NewServer for an out-of-range batch size
	// or option, and by Dial for an out-of-range client option.
	ErrBadConfig = errors.New("echo: bad configuration")
)

// mismatchError turns the *pytree.MismatchError of a tree checked against
// the example into ErrSpecMismatch, keeping the pytree error's text, which
// names the leaf and both values: "echo: spec mismatch: obs/radars: shape
// [8 6], expected [8 5]".
func mismatchError(err error) error {
	return fmt.Errorf("%w: %w", ErrSpecMismatch, err)
}
