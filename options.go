//go:build linux

package echo

import (
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/seed-a9ef92a1/echo/tcp"
	"github.com/seed-a9ef92a1/echo/wire"
)

// Defaults of the server options.
const (
	// DefaultNumBuffers is three slabs: the consumer reads one while
	// producers fill the second and spill into the third, so a consumer that
	// returns promptly never stalls a producer.
	DefaultNumBuffers = 3
	// DefaultNumDrainers is the number of ingress workers that move samples
	// from producer queues and connections into the ring, capped at
	// GOMAXPROCS when that is smaller: a worker keeps a core busy while it
	// has samples to move, and more of them than cores only take turns (on
	// 2 cores, 8 workers halved W2 throughput with 64 producers against 2).
	DefaultNumDrainers = 8
	// DefaultDirectProducerBytes is the sample size from which producers
	// write straight into the ring instead of queueing: from 8 KiB the
	// queue's second copy costs more than producers contending for ring
	// slots.
	DefaultDirectProducerBytes = 8 << 10
	// DefaultProducerQueueSize is the number of samples each producer may
	// have queued before Send waits.
	DefaultProducerQueueSize = 8
)

// config is the server's configuration after options are applied.
type config struct {
	numBuffers        int
	numDrainers       int
	producerQueueSize int
	// directProducerBytes: samples of at least this many bytes take the
	// direct route; negative means never.
	directProducerBytes int
	detailedMetrics     bool
	transports          []tcp.Transport
	logger              *slog.Logger
	maxConnections      int
	maxPayload          int64
	secret              []byte // nil: no authentication
	authTimeout         time.Duration
	sessionTTL          time.Duration
	v1Only              bool
	sharedMemory        bool
	learnerSocket       string
	stagingBudget       int64
	stallTimeout        time.Duration
	wait                WaitStrategy
}

func defaultConfig() config {
	return config{
		numBuffers:          DefaultNumBuffers,
		numDrainers:         min(DefaultNumDrainers, runtime.GOMAXPROCS(0)),
		producerQueueSize:   DefaultProducerQueueSize,
		directProducerBytes: DefaultDirectProducerBytes,
		maxPayload:          wire.DefaultLimits.MaxPayload,
	}
}

func (c config) validate() error {
	if c.numBuffers < 2 {
		return fmt.Errorf("%w: num_buffers %d, must be at least 2", ErrBadConfig, c.numBuffers)
	}
	if c.numDrainers < 1 {
		return fmt.Errorf("%w: num_drainers %d, must be at least 1", ErrBadConfig, c.numDrainers)
	}
	if c.maxConnections < 0 {
		return fmt.Errorf("%w: max connections %d, must be at least 0", ErrBadConfig, c.maxConnections)
	}
	if c.maxPayload < 1 {
		return fmt.Errorf("%w: max payload %d bytes, must be at least 1", ErrBadConfig, c.maxPayload)
	}
	if c.secret != nil && len(c.secret) < wire.MinSecretLen {
		return fmt.Errorf("%w: shared secret of %d bytes, must be at least %d", ErrBadConfig, len(c.secret), wire.MinSecretLen)
	}
	if c.stagingBudget < 0 {
		return fmt.Errorf("%w: staging budget %d bytes, must not be negative", ErrBadConfig, c.stagingBudget)
	}
	if c.sessionTTL < 0 {
		return fmt.Errorf("%w: session TTL %v, must not be negative", ErrBadConfig, c.sessionTTL)
	}
	if c.authTimeout < 0 {
		return fmt.Errorf("%w: auth timeout %v, must not be negative", ErrBadConfig, c.authTimeout)
	}
	if c.producerQueueSize < 1 {
		return fmt.Errorf("%w: producer_queue_size %d, must be at least 1", ErrBadConfig, c.producerQueueSize)
	}
	for _, t := range c.transports {
		if err := t.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrBadConfig, err)
		}
	}
	return nil
}

// Option configures a Server.
type Option func(*config)

// WithNumBuffers sets the number of batch slabs in the ring (default
// DefaultNumBuffers, at least 2). More slabs absorb a slower consumer at the
// cost of NumBuffers·batchSize·payload bytes of memory.
func WithNumBuffers(n int) Option { return func(c *config) { c.numBuffers = n } }

// WithNumDrainers sets the number of ingress workers (default
// DefaultNumDrainers or GOMAXPROCS, whichever is smaller; at least 1).
func WithNumDrainers(n int) Option { return func(c *config) { c.numDrainers = n } }

// WithProducerQueueSize sets the per-producer queue length (default
// DefaultProducerQueueSize, at least 1).
func WithProducerQueueSize(n int) Option { return func(c *config) { c.producerQueueSize = n } }

// WithDirectProducerBytes sets the sample size from which producers claim
// ring slots directly instead of queueing (default
// DefaultDirectProducerBytes). 0 sends every producer direct; a negative
// value queues every producer, whatever its sample size.
func WithDirectProducerBytes(n int) Option { return func(c *config) { c.directProducerBytes = n } }

// WithDetailedMetrics turns on the detailed metrics of SampleInfo: CAS
// counters and the latency histograms. Off by default; when off they cost a
// predictable branch per reservation.
func WithDetailedMetrics(on bool) Option { return func(c *config) { c.detailedMetrics = on } }

// WithTCP makes Start listen for actors on a TCP address, in Go's
// convention: "127.0.0.1:7000" accepts local actors only, ":7000" every
// interface (IPv4 and IPv6), port 0 lets the kernel choose (see
// Server.Addr). There is no default address: a server listens only where
// told to. The protocol has no authentication, so on a shared network
// listen on an interface only trusted actors can reach, or require
// WithSharedSecret.
func WithTCP(addr string) Option {
	return func(c *config) { c.transports = append(c.transports, tcp.TCP(addr, 0)) }
}

// WithUnix makes Start listen on a Unix-domain stream socket at path, for
// actors on the same host, with the same wire protocol as TCP (Dial's
// address is "unix:" + path). Start fails if path exists; Close removes
// it.
func WithUnix(path string) Option {
	return func(c *config) { c.transports = append(c.transports, tcp.Unix(path)) }
}

// WithLogger sends connection events to l: each connection opened and
// closed (with its peer, the samples it delivered and the partial bytes
// discarded) at Debug, and each one dropped for an error or refused at
// Warn. Off by default. Nothing is logged per sample.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithMaxConnections caps the connections open at once (default 0: no
// cap). A connection past the cap is closed as soon as it is accepted,
// before the handshake, so its client's Dial fails; each refusal is
// counted in SampleInfo.RefusedConnections and logged at Warn.
func WithMaxConnections(n int) Option { return func(c *config) { c.maxConnections = n } }

// WithMaxPayloadBytes caps the size of one sample (default
// wire.DefaultLimits.MaxPayload, 1 GiB): NewServer refuses an example whose
// leaves add up to more, before it maps anything.
func WithMaxPayloadBytes(n int64) Option { return func(c *config) { c.maxPayload = n } }

// WithSharedSecret makes every connection prove that it holds secret (at
// least wire.MinSecretLen bytes; random bytes, not a password) before it is
// served, and proves the server holds it too; see package wire for the
// exchange. The secret never crosses the wire. A connection that fails, or
// does not answer within the auth timeout, is closed before it touches the
// ring, counted in SampleInfo.AuthFailures and logged at Warn.
//
// Off by default, because echo's own clients (protocol version 1) cannot
// answer the challenge: they stop with a bad-magic error. Go clients answer
// with WithClientSecret. It authenticates peers, not the stream: on a
// network an attacker can watch, tunnel the connections too.
func WithSharedSecret(secret []byte) Option {
	return func(c *config) { c.secret = append([]byte{}, secret...) }
}

// WithAuthTimeout sets how long a connection may take to authenticate
// (default tcp.DefaultPrologueTimeout, 5 s). Without WithSharedSecret it
// bounds the handshake alone, which a peer that reads takes at once.
func WithAuthTimeout(d time.Duration) Option { return func(c *config) { c.authTimeout = d } }

// WithStagingBudget bounds the memory, in bytes, that all connections may
// hold at once in staging buffers (default tcp.DefaultStagingBudget, 256
// MiB; at least one sample). Samples too large to wait whole in the
// kernel are read into such a buffer as they arrive, and so are partial
// samples on Unix sockets. A connection takes a buffer when a sample's
// first byte arrives, not when it connects, so idle connections hold none;
// past the budget, connections that need one wait for one.
func WithStagingBudget(bytes int64) Option { return func(c *config) { c.stagingBudget = bytes } }

// WithStallTimeout sets how long a connection may hold a partial sample
// without sending more of it before it is dropped (default
// tcp.DefaultStallTimeout, 30 s; negative: never). Each such drop is
// counted in SampleInfo.StalledConnections and logged once at Warn. The
// timeout bounds how long one stalled peer can keep a staging buffer, and
// so how long it can hold up other connections waiting for one.
func WithStallTimeout(d time.Duration) Option { return func(c *config) { c.stallTimeout = d } }

// WithSessionTTL sets how long a wire version 2 session outlives its last
// connection (default tcp.DefaultSessionTTL, one minute): a client that
// reconnects within it resumes where the server's commits stopped, one
// that comes later has lost its session (ErrSessionLost).
func WithSessionTTL(d time.Duration) Option { return func(c *config) { c.sessionTTL = d } }

// WithSharedMemory puts the server's ring in a memfd mapped shared
// instead of private anonymous memory, so that another process given the
// fd can map the same slabs (the first step of learner processes reading
// batches with no copy). Memory().Kind says which pages it got: hugetlbfs
// pages where the host reserved enough (vm.nr_hugepages), shmem
// transparent huge pages where
// /sys/kernel/mm/transparent_hugepage/shmem_enabled allows them, base
// pages otherwise (the kernel's default). Off by default: the anonymous
// ring gets transparent huge pages on more hosts.
func WithSharedMemory() Option { return func(c *config) { c.sharedMemory = true } }

// WithVersion1Only makes the server speak echo's wire version 1 alone: it
// takes no look at a connection's first bytes for version 2's probe, and
// Go clients fall back to version 1 as they do with echo's server. For
// measuring what version 2 costs; there is no other reason to.
func WithVersion1Only() Option { return func(c *config) { c.v1Only = true } }
