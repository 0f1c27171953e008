package tcp

import (
	"sync"
	"sync/atomic"
)

// DefaultStagingBudget is the memory all connections of a pool may hold in
// staging buffers at once, unless Config says otherwise: 32 partial samples
// of 8 MiB. A connection takes a buffer when its sample's first byte is read
// and gives it back when it has no unfinished sample, so idle connections
// hold none.
const DefaultStagingBudget = 256 << 20

// stagePool hands out staging buffers of one sample each, within a budget
// of bytes. Buffers come back to a free list and are handed out again, so
// the memory held never exceeds the budget. Any worker may call get and
// put.
type stagePool struct {
	payload int
	budget  int

	mu    sync.Mutex
	free  [][]byte
	held  int // bytes allocated: handed out or on the free list
	inUse int // bytes handed out
	// waiting counts connections parked for a buffer: get adds one for
	// each refusal, under mu, and the workers take them back when they
	// resume their parked connections. put wakes the workers while it is
	// above zero.
	waiting atomic.Int32
	wake    func() // wakes every worker's parked connections
}

// get returns a buffer, or nil when the budget is spent; the caller then
// parks its connection until wake.
func (s *stagePool) get() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free[n-1] = nil
		s.free = s.free[:n-1]
		s.inUse += s.payload
		return b
	}
	if s.held+s.payload > s.budget {
		s.waiting.Add(1)
		return nil
	}
	s.held += s.payload
	s.inUse += s.payload
	return make([]byte, s.payload)
}

// put gives a buffer back.
func (s *stagePool) put(b []byte) {
	s.mu.Lock()
	s.free = append(s.free, b)
	s.inUse -= s.payload
	s.mu.Unlock()
	if s.waiting.Load() > 0 {
		s.wake()
	}
}

// stats returns the bytes handed out and held.
func (s *stagePool) stats() (inUse, held int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inUse, s.held
}
