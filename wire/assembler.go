package wire

import (
	"fmt"
	"slices"
)

// Assembler cuts an unframed byte stream into whole samples of a fixed
// payload size. Feed it the stream's chunks in order, however they were cut;
// it calls back once per whole sample.
//
// A sample that lies whole inside one chunk is handed out as a sub-slice of
// that chunk, without copying; only a sample split across chunks is copied,
// into one internal buffer of payload bytes, allocated the first time a
// sample is split. After that, Feed allocates nothing.
//
// An Assembler is not safe for concurrent use.
type Assembler struct {
	payload int    // bytes per sample, >= 1; fixed by NewAssembler
	partial []byte // len payload once allocated; partial[:pending] holds the split sample
	pending int    // 0 <= pending < payload between calls to Feed
}

// NewAssembler returns an Assembler for samples of payload bytes. payload
// must be at least 1 (else an error wrapping ErrMalformed): a stream of
// empty samples has no boundaries to find. Callers usually pass a
// Handshake's PayloadSize, which is already bounded by Limits.
func NewAssembler(payload int) (*Assembler, error) {
	if payload < 1 {
		return nil, fmt.Errorf("%w: payload size %d, want >= 1", ErrMalformed, payload)
	}
	return &Assembler{payload: payload}, nil
}

// Payload returns the sample size the Assembler was made for.
func (a *Assembler) Payload() int { return a.payload }

// Pending returns the bytes of the partial sample held, in [0, Payload()).
func (a *Assembler) Pending() int { return a.pending }

// Reset drops the partial sample held, if any.
func (a *Assembler) Reset() { a.pending = 0 }

// Feed consumes all of chunk and calls emit once for each sample it
// completes, in stream order, and returns the number of samples emitted.
//
// The sample passed to emit is valid only during the call: it aliases either
// chunk or the Assembler's buffer, and its capacity is capped at its length.
// emit must not modify it if chunk must stay intact, must not keep it, and
// must not call Feed or Reset on the same Assembler.
func (a *Assembler) Feed(chunk []byte, emit func(sample []byte)) int {
	p := a.payload
	count := 0
	if a.pending > 0 {
		n := copy(a.partial[a.pending:], chunk)
		chunk = chunk[n:]
		if a.pending+n < p {
			a.pending += n
			return 0
		}
		a.pending = 0
		emit(a.partial[:p:p])
		count++
	}
	for len(chunk) >= p {
		emit(chunk[:p:p])
		chunk = chunk[p:]
		count++
	}
	if len(chunk) > 0 {
		if a.partial == nil {
			a.partial = make([]byte, p)
		}
		a.pending = copy(a.partial, chunk)
	}
	return count
}

// AppendAcks appends n Ack bytes to dst, one per accepted sample, and
// returns the extended slice. n <= 0 appends nothing.
func AppendAcks(dst []byte, n int) []byte {
	if n <= 0 {
		return dst
	}
	dst = slices.Grow(dst, n)
	for range n {
		dst = append(dst, Ack)
	}
	return dst
}
