package tcp

import (
	"crypto/rand"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/wire"
)

// DefaultSessionTTL is how long a version 2 session outlives its last
// connection: ample for a client to notice a lost connection and dial
// again with backoff, short enough that the sessions of actors that went
// away do not pile up.
const DefaultSessionTTL = time.Minute

// DefaultMaxSessions bounds the sessions a server keeps when MaxConns does
// not: each is a hundred bytes, so the bound is about memory only when a
// peer opens sessions in a loop.
const DefaultMaxSessions = 1 << 16

// session is what the server knows of a version 2 client across its
// connections: how many of its samples are in the ring. A reconnecting
// client resends from there (see wire's Reply), so each sample lands once.
//
// The acceptor creates, finds and forgets sessions (its goroutine only);
// the worker serving a session's connection adds its commits and detaches
// it when the connection ends. fd and the detach are under mu, so that the
// acceptor can shut down a connection that is still attached (a client
// that reconnected before the server saw its old connection die) without
// racing the worker's close of that descriptor.
type session struct {
	id wire.SessionID
	// committed counts the session's samples in the ring, over all its
	// connections. Written by the one worker serving it, read by the
	// acceptor once the session is detached.
	committed atomic.Uint64

	mu sync.Mutex
	// fd is the attached connection's socket, -1 when none is.
	fd int
	// detachedAt is when the last connection ended (zero while attached).
	detachedAt time.Time
	// waited: a prologue is waiting for this session's connection to end.
	waited bool
}

// detach ends the session's attachment to fd, before fd is closed, and
// wakes the acceptor when a reconnection waits for it.
func (s *session) detach(fd int, a *acceptor) {
	s.mu.Lock()
	if s.fd != fd {
		s.mu.Unlock()
		return
	}
	s.fd = -1
	s.detachedAt = time.Now()
	waited := s.waited
	s.waited = false
	s.mu.Unlock()
	if waited && a != nil {
		a.resumeWake.Store(true)
		a.poller.Wake()
	}
}

// attach gives the session to fd if no connection holds it, and returns
// whether it did. Otherwise it shuts the holder's socket down, so that the
// worker serving it sees its end, and marks the session waited for.
func (s *session) attach(fd int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		s.fd = fd
		s.detachedAt = time.Time{}
		return true
	}
	if !s.waited {
		// The descriptor is still open: its worker closes it only after
		// detach, under mu. An error means it is already shut down.
		_ = unix.Shutdown(s.fd, unix.SHUT_RDWR)
	}
	s.waited = true
	return false
}

// expired reports whether the session has had no connection for ttl.
func (s *session) expired(now time.Time, ttl time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fd < 0 && now.Sub(s.detachedAt) >= ttl
}

// sessions is the acceptor's table of sessions. Acceptor goroutine only.
type sessions struct {
	m         map[wire.SessionID]*session
	max       int
	ttl       time.Duration
	nextSweep time.Time
}

func newSessions(max int, ttl time.Duration) *sessions {
	return &sessions{m: make(map[wire.SessionID]*session), max: max, ttl: ttl}
}

// lookup returns the live session id names, or nil.
func (t *sessions) lookup(id wire.SessionID, now time.Time) *session {
	s := t.m[id]
	if s != nil && s.expired(now, t.ttl) {
		delete(t.m, id)
		return nil
	}
	return s
}

// create starts a session attached to fd, or returns nil when the table is
// full of sessions that still have connections.
func (t *sessions) create(fd int, now time.Time) *session {
	if len(t.m) >= t.max {
		t.sweep(now)
	}
	if len(t.m) >= t.max && !t.evictOldest() {
		return nil
	}
	s := &session{fd: fd}
	for {
		rand.Read(s.id[:]) // never fails: crypto/rand crashes the program first
		if _, taken := t.m[s.id]; !taken && !s.id.IsZero() {
			break
		}
	}
	t.m[s.id] = s
	return s
}

// sweep forgets expired sessions, at most once per quarter TTL unless the
// table is full.
func (t *sessions) sweep(now time.Time) {
	if len(t.m) < t.max && now.Before(t.nextSweep) {
		return
	}
	t.nextSweep = now.Add(t.ttl / 4)
	for id, s := range t.m {
		if s.expired(now, t.ttl) {
			delete(t.m, id)
		}
	}
}

// evictOldest forgets the session detached longest ago, and reports
// whether there was one.
func (t *sessions) evictOldest() bool {
	var oldest *session
	var at time.Time
	for _, s := range t.m {
		s.mu.Lock()
		detached, when := s.fd < 0, s.detachedAt
		s.mu.Unlock()
		if detached && (oldest == nil || when.Before(at)) {
			oldest, at = s, when
		}
	}
	if oldest == nil {
		return false
	}
	delete(t.m, oldest.id)
	return true
}
