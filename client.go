package echo

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// Client errors. Each is wrapped with detail; test with errors.Is.
var (
	// ErrBadMagic: the peer did not open with echo's handshake; it is not
	// an echo server.
	ErrBadMagic = wire.ErrBadMagic
	// ErrVersion: the server speaks a protocol version this client does
	// not.
	ErrVersion = wire.ErrVersion
	// ErrPayloadSize means that a sample's size in bytes differs from the
	// server's payload where nothing finer than sizes can be said. No call
	// of this package returns it: a tree of the wrong size differs from the
	// example in structure, dtype or shape, so Send and SendBatch name the
	// leaf with ErrSpecMismatch, and Dial compares the handshake leaf by
	// leaf (ErrSpecMismatch too).
	//
	// Deprecated: test for ErrSpecMismatch, which Send and SendBatch
	// return for every tree that does not match the example.
	ErrPayloadSize = errors.New("echo: payload size mismatch")
	// ErrConnectionClosed is returned by Send and Wait once the connection
	// is gone: the server closed it, the network failed, Close was called,
	// or a Send's context ended with part of a sample written.
	ErrConnectionClosed = errors.New("echo: connection closed")
	// ErrAuthRequired: the server asks actors to authenticate
	// (WithSharedSecret) and the client has no secret (WithClientSecret).
	ErrAuthRequired = errors.New("echo: server requires authentication")
	// ErrAuth: authentication failed. The server closed the connection
	// after the client's proof (the secrets differ), its own proof did not
	// match, or it did not ask for one from a client with a secret.
	ErrAuth = errors.New("echo: authentication failed")
)

// DefaultMaxInflight is the number of samples a Client may have sent and
// not yet seen acknowledged before Send waits: echo's max_inflight_msgs.
const DefaultMaxInflight = 32

// writeProbe is the period of a Client's probe timer, which hands the
// context of a write that has lasted one to two periods to the Client's
// watcher (see write). It bounds how late a cancellation is noticed while
// a write is blocked; the timer ticks only while writes with cancellable
// contexts are under way.
const writeProbe = 5 * time.Millisecond

// aLongTimeAgo is a write deadline in the past: it makes a blocked write
// return at once.
var aLongTimeAgo = time.Unix(1, 0)

// ClientOption configures Dial.
type ClientOption func(*clientConfig)

type clientConfig struct {
	maxInflight  int
	limits       wire.Limits
	secret       []byte // nil: the server must not ask
	version      int    // 0: version 2 when the server speaks it; 1; 2
	probeTimeout time.Duration
	dialer       func(ctx context.Context, network, address string) (net.Conn, error)
	reconnect    *Backoff // nil: a lost connection ends the Client
}

// newClientConfig applies opts and checks the result.
func newClientConfig(opts []ClientOption) (clientConfig, error) {
	cfg := clientConfig{maxInflight: DefaultMaxInflight, probeTimeout: DefaultProbeTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.maxInflight < 1:
		return cfg, fmt.Errorf("%w: max inflight %d, must be at least 1", ErrBadConfig, cfg.maxInflight)
	case cfg.version < 0 || cfg.version > 2:
		return cfg, fmt.Errorf("%w: wire version %d, want 0 (the newest both speak), 1 or 2", ErrBadConfig, cfg.version)
	case cfg.probeTimeout <= 0:
		return cfg, fmt.Errorf("%w: probe timeout %v, must be positive", ErrBadConfig, cfg.probeTimeout)
	case cfg.reconnect != nil && cfg.version == 1:
		return cfg, fmt.Errorf("%w: reconnection needs wire version 2's sessions", ErrBadConfig)
	}
	if b := cfg.reconnect; b != nil {
		if b.Min <= 0 {
			b.Min = DefaultBackoff.Min
		}
		if b.Max < b.Min {
			b.Max = max(b.Min, DefaultBackoff.Max)
		}
		if b.GiveUp <= 0 {
			b.GiveUp = DefaultBackoff.GiveUp
		}
	}
	return cfg, nil
}

// WithMaxInflight bounds the samples sent and not yet acknowledged (default
// DefaultMaxInflight, at least 1). Send waits at the bound.
func WithMaxInflight(n int) ClientOption { return func(c *clientConfig) { c.maxInflight = n } }

// WithHandshakeLimits bounds what the client accepts in the server's
// handshake (default wire.DefaultLimits).
func WithHandshakeLimits(l wire.Limits) ClientOption { return func(c *clientConfig) { c.limits = l } }

// WithClientSecret answers a server's WithSharedSecret challenge with
// secret and checks the server's proof in turn. With a secret, Dial also
// refuses a server that does not ask: it could be anyone's.
func WithClientSecret(secret []byte) ClientOption {
	return func(c *clientConfig) { c.secret = append([]byte{}, secret...) }
}

// Client is an actor's connection to a server, local or remote, echo's or
// this package's. It sends samples shaped like its example; the server
// acknowledges each with one byte once it holds the sample.
//
// Send, SendBatch and Wait may be called from several goroutines; samples
// from one Client arrive in the order their Sends returned.
type Client struct {
	// Read-only after NewClient.
	spec    *pytree.Spec
	payload int
	version uint8
	session wire.SessionID // version 2: the session of every connection
	// rs is the replay state of a reconnecting Client; nil without
	// WithReconnect.
	rs *resumer

	// conn is the connection. It changes only in a reconnection, under
	// both wireMu (which a reconnecting Client's writes hold) and connMu
	// (which end takes to close it).
	conn   net.Conn
	connMu sync.Mutex
	wireMu sync.Mutex

	// sendMu serialises Send and SendBatch; every field down to watchOnce
	// is theirs, read and written under it.
	sendMu sync.Mutex
	leaves []pytree.Array // Send's flatten scratch
	many   []pytree.Array // SendBatch's scratch: the leaves of every tree
	// vec holds the leaves' bytes of one write, cleared after it; bufs is
	// what is left of vec to write. bufs is a field, not a local, so that
	// handing &bufs to the connection's writev does not move it to the
	// heap on every Send.
	vec  [][]byte
	bufs net.Buffers

	// The write watch, for writes with a cancellable context (see write).
	// wmu guards the fields below it; the writer (under sendMu), the probe
	// timer's function and Close take it.
	wmu     sync.Mutex
	wctx    context.Context // the context of the write under way; nil between writes
	wseq    uint64          // counts writes with a cancellable context
	seenSeq uint64          // wseq at the probe's last look
	watched bool            // the watcher holds wctx, until the writer's unwatch
	ticking bool            // probe is armed
	probe   *time.Timer     // made on the first write with a cancellable context
	watches uint64          // writes handed to the watcher, for tests

	// watch hands the context of a long write to the watcher goroutine;
	// unwatch, sent by the writer, tells it the write is over. Both
	// unbuffered. watchOnce starts the watcher, or, in Close, makes sure
	// it never starts.
	watch     chan context.Context
	unwatch   chan struct{}
	watchOnce sync.Once
	watchEnd  chan struct{} // closed when the watcher ends (or never starts)

	// tokens holds one token per sample in flight: Send puts, the ack
	// reader takes. Its capacity is max_inflight.
	tokens   chan struct{}
	inflight atomic.Int64
	// idle gets a token when inflight drops to zero; a Wait that takes it
	// puts it back for the next.
	idle chan struct{}
	// done is closed when the Client ends; cause says why. life ends with
	// it, for the dials of a reconnection.
	done      chan struct{}
	cause     error
	life      context.Context
	endLife   context.CancelFunc
	readerEnd chan struct{}
	closeOnce sync.Once
}

// Dial connects to the server at addr and checks its handshake against
// example, a tree shaped like the samples this client will send. addr is
// "host:port" for TCP, or "unix:" followed by a path for a Unix-domain
// socket. ctx bounds the connection and the handshake.
//
// Dial speaks wire version 2 with a server that does (this package's):
// the server then checks dtypes and leaf paths too, and the connection
// belongs to a session that WithReconnect resumes. A server that does not
// answer version 2's probe within the probe timeout (echo's own) is dialed
// again and spoken to in version 1; WithWireVersion chooses instead.
//
// Errors wrap ErrBadMagic when the peer is not an echo server, ErrVersion
// for another protocol version, ErrNoVersion2 when version 2 is required
// and not spoken, and ErrSpecMismatch, naming the first differing leaf,
// when the server expects other samples.
func Dial(ctx context.Context, addr string, example any, opts ...ClientOption) (*Client, error) {
	cfg, err := newClientConfig(opts)
	if err != nil {
		return nil, err
	}
	spec, want, err := clientSpec(example)
	if err != nil {
		return nil, err
	}
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", path
	}
	if cfg.dialer == nil {
		var d net.Dialer
		cfg.dialer = d.DialContext
	}
	connect := func(ctx context.Context, cfg *clientConfig, session wire.SessionID) (net.Conn, negotiation, error) {
		conn, err := cfg.dialer(ctx, network, address)
		if err != nil {
			return nil, negotiation{}, err
		}
		neg, err := open(ctx, conn, spec, want, cfg, session)
		if err != nil {
			conn.Close()
			return nil, negotiation{}, err
		}
		return conn, neg, nil
	}
	conn, neg, err := connect(ctx, &cfg, wire.SessionID{})
	if err == errNoOffer && cfg.version == 0 && cfg.reconnect == nil {
		// A version 1 server holds the probe as part of a sample, which it
		// drops with the connection: speak version 1 on a new one.
		v1 := cfg
		v1.version = 1
		conn, neg, err = connect(ctx, &v1, wire.SessionID{})
	}
	if err != nil {
		return nil, dialError(addr, noOffer(err))
	}
	c := newClient(conn, spec, &cfg, neg)
	if cfg.reconnect != nil {
		c.rs.redial = func(ctx context.Context) (net.Conn, negotiation, error) {
			return connect(ctx, &cfg, neg.session)
		}
	}
	go c.readAcks()
	return c, nil
}

// dialError prefixes err with the address dialed, keeping one "echo:"
// at the front.
func dialError(addr string, err error) error {
	if strings.HasPrefix(err.Error(), "echo: ") {
		return fmt.Errorf("%w (dialing %s)", err, addr)
	}
	return fmt.Errorf("echo: dial %s: %w", addr, err)
}

// noOffer turns errNoOffer into the caller's error.
func noOffer(err error) error {
	if err == errNoOffer {
		return fmt.Errorf("%w: no answer to its probe", ErrNoVersion2)
	}
	return err
}

// NewClient is Dial over a connection the caller made: through a proxy, from
// another network namespace, with its own dialer. conn may be any stream
// net.Conn; with *net.TCPConn and *net.UnixConn a sample is one writev
// (WSASend on Windows), with others one Write per leaf. Send's context is
// honoured through conn's write deadline, which the Client then owns.
// NewClient reads and checks the handshake and returns errors as Dial does;
// on error the caller still owns conn, on success the Client does.
//
// NewClient cannot dial again, so it cannot reconnect (WithReconnect needs
// Dial, with WithDialer for a dialer of one's own), and a server that does
// not answer version 2's probe fails it with ErrNoVersion2 unless
// WithWireVersion(1) says to speak version 1 from the start.
func NewClient(ctx context.Context, conn net.Conn, example any, opts ...ClientOption) (*Client, error) {
	cfg, err := newClientConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.reconnect != nil {
		return nil, fmt.Errorf("%w: a Client made by NewClient cannot reconnect: use Dial with WithDialer", ErrBadConfig)
	}
	spec, want, err := clientSpec(example)
	if err != nil {
		return nil, err
	}
	neg, err := open(ctx, conn, spec, want, &cfg, wire.SessionID{})
	if err != nil {
		return nil, noOffer(err)
	}
	c := newClient(conn, spec, &cfg, neg)
	go c.readAcks()
	return c, nil
}

// clientSpec is the spec of a client's example and the version 1
// handshake it expects.
func clientSpec(example any) (*pytree.Spec, wire.Handshake, error) {
	spec, err := pytree.SpecOf(example)
	if err != nil {
		return nil, wire.Handshake{}, fmt.Errorf("%w: %w", ErrBadExample, err)
	}
	want, err := wire.HandshakeOf(spec)
	if err != nil {
		return nil, wire.Handshake{}, fmt.Errorf("%w: %w", ErrBadExample, err)
	}
	return spec, want, nil
}

// open runs a connection's prologue: it reads the server's handshake
// (authenticating first when asked), checks it, and negotiates version 2
// with session when the server speaks it.
func open(ctx context.Context, conn net.Conn, spec *pytree.Spec, want wire.Handshake, cfg *clientConfig, session wire.SessionID) (negotiation, error) {
	// ctx bounds the read: its end sets a deadline in the past.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	got, err := readHandshake(conn, *cfg)
	if !stop() || ctx.Err() != nil {
		return negotiation{}, fmt.Errorf("reading handshake: %w", context.Cause(ctx))
	}
	if err != nil {
		return negotiation{}, err
	}
	if err := want.Compare(got); err != nil {
		return negotiation{}, specMismatch(spec, want, got)
	}
	return negotiate(ctx, conn, spec, cfg, session)
}

// newClient builds the client of a connection whose prologue is done.
func newClient(conn net.Conn, spec *pytree.Spec, cfg *clientConfig, neg negotiation) *Client {
	life, endLife := context.WithCancel(context.Background())
	c := &Client{
		conn:      conn,
		spec:      spec,
		payload:   spec.PayloadBytes(),
		version:   neg.version,
		session:   neg.session,
		leaves:    make([]pytree.Array, 0, spec.NumLeaves()),
		vec:       make([][]byte, 0, spec.NumLeaves()),
		watch:     make(chan context.Context),
		unwatch:   make(chan struct{}),
		watchEnd:  make(chan struct{}),
		tokens:    make(chan struct{}, cfg.maxInflight),
		idle:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		life:      life,
		endLife:   endLife,
		readerEnd: make(chan struct{}),
	}
	if cfg.reconnect != nil {
		c.rs = &resumer{backoff: *cfg.reconnect, replay: make([]byte, cfg.maxInflight*c.payload)}
	}
	return c
}

// readHandshake reads the server's handshake, authenticating first when
// the server asks.
func readHandshake(conn net.Conn, cfg clientConfig) (wire.Handshake, error) {
	var first [wire.ChallengeLen]byte
	n, err := io.ReadFull(conn, first[:len(wire.AuthMagic)])
	if n < len(wire.AuthMagic) || string(first[:n]) != wire.AuthMagic {
		if cfg.secret != nil && err == nil {
			return wire.Handshake{}, fmt.Errorf("%w: the server did not ask for a proof", ErrAuth)
		}
		// Not a challenge: the bytes read open the handshake, or its
		// errors.
		return wire.ReadHandshake(io.MultiReader(bytes.NewReader(first[:n]), conn), cfg.limits)
	}
	if _, err := io.ReadFull(conn, first[n:]); err != nil {
		return wire.Handshake{}, fmt.Errorf("reading the authentication challenge: %w", err)
	}
	nonce, err := wire.DecodeChallenge(first[:])
	if err != nil {
		return wire.Handshake{}, err
	}
	if cfg.secret == nil {
		return wire.Handshake{}, ErrAuthRequired
	}
	var mine wire.Nonce
	rand.Read(mine[:]) // never fails: crypto/rand crashes the program first
	if _, err := conn.Write(wire.AppendResponse(nil, cfg.secret, &nonce, &mine)); err != nil {
		return wire.Handshake{}, fmt.Errorf("sending the authentication response: %w", err)
	}
	var proof wire.Proof
	if _, err := io.ReadFull(conn, proof[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			return wire.Handshake{}, fmt.Errorf("%w: the server closed the connection after our proof (a different secret?)", ErrAuth)
		}
		return wire.Handshake{}, fmt.Errorf("reading the server's proof: %w", err)
	}
	if err := wire.VerifyServerProof(proof[:], cfg.secret, &nonce, &mine); err != nil {
		return wire.Handshake{}, fmt.Errorf("%w: %w", ErrAuth, err)
	}
	return wire.ReadHandshake(conn, cfg.limits)
}

// specMismatch names the first leaf where the server's handshake differs
// from the client's example, in the words of a tree checked against the
// example: the example's value first, the server's as the expected one.
// The version 1 handshake carries neither paths nor dtypes: leaves pair up
// in flatten order, and a dtype is known on the server's side by its size
// alone ("dtype int64 (8 bytes), expected a 4-byte dtype").
func specMismatch(spec *pytree.Spec, want, got wire.Handshake) error {
	if len(want.Arrays) != len(got.Arrays) {
		return mismatchError(&pytree.MismatchError{What: "leaf count",
			Got: fmt.Sprint(len(want.Arrays)), Want: fmt.Sprint(len(got.Arrays))})
	}
	for i, a := range want.Arrays {
		b, l := got.Arrays[i], spec.Leaves()[i]
		if a.DTypeSize != b.DTypeSize {
			return mismatchError(&pytree.MismatchError{Path: l.Path, What: "dtype",
				Got:  fmt.Sprintf("%v (%d bytes)", l.DType, a.DTypeSize),
				Want: fmt.Sprintf("a %d-byte dtype", b.DTypeSize)})
		}
		if !slices.Equal(a.Shape, b.Shape) {
			return mismatchError(&pytree.MismatchError{Path: l.Path, What: "shape",
				Got: fmt.Sprint(a.Shape), Want: fmt.Sprint(b.Shape)})
		}
	}
	// Not reached while ReadHandshake accepts version 1 alone: Compare
	// found a difference, and it lies in the arrays.
	return fmt.Errorf("%w: server speaks version %d, this client %d", ErrVersion, got.Version, want.Version)
}

// Send writes one sample, its leaves straight from the caller's arrays in
// one write (a writev on Unix, WSASend on Windows). It waits first while
// max_inflight samples are unacknowledged. A tree that differs from the
// example in structure, dtype or shape returns ErrSpecMismatch naming the
// leaf, and nothing is sent. Once the connection is gone Send returns
// ErrConnectionClosed; with WithReconnect, only once the Client has given
// up on reconnecting (the cases below then differ too: see
// WithReconnect).
//
// ctx bounds every wait:
//
//   - If ctx is done before any byte of the sample is written (on entry,
//     while Send waits for an in-flight token, or while its write is
//     blocked before the first byte went out), Send returns an error
//     wrapping ctx's error, nothing is sent, and the connection stays
//     usable.
//   - If ctx ends while the write is blocked part-way through the sample
//     (the server does not read, and the kernel's send buffer is full), the
//     write is abandoned. A partial sample is then on the wire, so the
//     connection cannot go on: the Client ends, later calls return
//     ErrConnectionClosed with a cause that names the cancellation, and
//     Send returns an error wrapping both ErrConnectionClosed and ctx's
//     error. The server drops a partial sample: nothing half-written is
//     delivered.
//
// A cancellation that comes while the write is under way is noticed once
// the write has lasted 5 to 10 ms (writeProbe), and at once after that.
//
// Send allocates nothing, with context.Background() as with a cancellable
// context that is not cancelled. When it returns nil, the sample's bytes
// are in the kernel, and the caller may reuse its arrays.
func (c *Client) Send(ctx context.Context, tree any) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	leaves, err := c.spec.FlattenInto(tree, c.leaves)
	if err != nil {
		clear(c.leaves[:cap(c.leaves)])
		return c.rejected(tree, err)
	}
	defer clear(leaves)
	select {
	case <-c.done:
		return c.closedErr()
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("echo: send: nothing sent: %w", err)
	}
	select {
	case c.tokens <- struct{}{}:
	case <-c.done:
		return c.closedErr()
	case <-ctx.Done():
		return fmt.Errorf("echo: send: nothing sent, waiting for acknowledgements: %w", ctx.Err())
	}
	c.inflight.Add(1)
	if c.rs != nil {
		_, err = c.sendReplay(ctx, leaves, 1)
	} else {
		_, err = c.send(ctx, leaves, 1)
	}
	return err
}

// SendBatch sends trees in order, as Send would one by one, but with one
// write per max_inflight samples instead of one per sample: an actor
// stepping several environments at once pays the system call once. Every
// tree is checked before anything is sent; on a mismatch the error names
// the tree's index and nothing is sent. Like Send, it waits while too many
// samples are unacknowledged, and allocates nothing once its scratch has
// grown to the largest batch.
//
// ctx bounds every wait as it does Send's. If ctx ends between two writes,
// or before the first byte of a write, the trees before it have been sent
// and no byte of the rest: SendBatch returns an error wrapping ctx's error
// that says how many were sent, and the connection stays usable. If ctx
// ends part-way through a sample, the Client ends as it does for Send.
func (c *Client) SendBatch(ctx context.Context, trees []any) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	nl := c.spec.NumLeaves()
	if need := len(trees) * nl; cap(c.many) < need {
		c.many = make([]pytree.Array, 0, need)
	}
	all := c.many[:0]
	for i, tree := range trees {
		leaves, err := c.spec.FlattenInto(tree, all[len(all):len(all):cap(all)])
		if err != nil {
			clear(c.many[:cap(c.many)])
			return fmt.Errorf("tree %d: %w", i, c.rejected(tree, err))
		}
		all = all[:len(all)+len(leaves)]
	}
	defer clear(all)
	select {
	case <-c.done:
		return c.closedErr()
	default:
	}
	bound := cap(c.tokens)
	sent := 0
	for len(all) > 0 {
		if err := ctx.Err(); err != nil {
			return c.batchCancelled(sent, len(trees), err)
		}
		k := min(bound, len(all)/nl)
		for i := range k {
			select {
			case c.tokens <- struct{}{}:
			case <-c.done:
				return c.closedErr()
			case <-ctx.Done():
				for range i { // the tokens of samples not sent
					<-c.tokens
				}
				return c.batchCancelled(sent, len(trees), ctx.Err())
			}
		}
		c.inflight.Add(int64(k))
		var n int
		var err error
		if c.rs != nil {
			n, err = c.sendReplay(ctx, all[:k*nl], k)
		} else {
			n, err = c.send(ctx, all[:k*nl], k)
		}
		sent += n
		if err != nil {
			if errors.Is(err, ErrConnectionClosed) {
				return err
			}
			return c.batchCancelled(sent, len(trees), ctx.Err())
		}
		all = all[k*nl:]
	}
	return nil
}

// batchCancelled is SendBatch's error when ctx ended with the stream
// intact after sent of total samples.
func (c *Client) batchCancelled(sent, total int, err error) error {
	return fmt.Errorf("echo: send batch: %d of %d samples sent, no byte of the rest: %w", sent, total, err)
}

// send writes k samples whose leaves are leaves and for which k tokens
// are held and counted in inflight, and returns how many went out whole.
// When ctx ended with the stream at a sample boundary (before the write,
// too: a select that found both a token and ctx done may have taken the
// token), it gives back the tokens of the samples not sent and returns
// ctx's error (wrapped, without ErrConnectionClosed): the connection goes
// on. Any other failure ends the connection and returns an error wrapping
// ErrConnectionClosed.
func (c *Client) send(ctx context.Context, leaves []pytree.Array, k int) (int, error) {
	var (
		n         int64
		cancelled bool
		err       = ctx.Err()
	)
	if err != nil {
		cancelled = true
	} else {
		n, cancelled, err = c.write(ctx, leaves)
	}
	if err == nil {
		return k, nil
	}
	whole, partial := k, false
	if c.payload > 0 {
		whole, partial = int(n/int64(c.payload)), n%int64(c.payload) != 0
	}
	if !cancelled {
		c.end(fmt.Errorf("%w: send: %w", ErrConnectionClosed, err))
		return whole, c.closedErr()
	}
	if partial {
		cerr := fmt.Errorf("%w: send abandoned part-way through a sample: %w", ErrConnectionClosed, err)
		c.end(cerr)
		return whole, cerr
	}
	// At a sample boundary: the samples not sent were never in flight.
	for range k - whole {
		<-c.tokens // ours: the ack reader takes tokens only for samples sent
	}
	if c.inflight.Add(int64(whole-k)) == 0 {
		select {
		case c.idle <- struct{}{}:
		default:
		}
	}
	return whole, fmt.Errorf("echo: send: nothing sent: %w", err)
}

// write sends the leaves' bytes, straight from their memory, as one
// net.Buffers write: writev on Unix, WSASend on Windows (Go's runtime
// keeps the iovec array; with bufs and vec reused, nothing is allocated).
// It returns the bytes written, and whether the write stopped because ctx
// ended, in which case err is ctx's error.
//
// How a write honours ctx without a goroutine, a timer or a deadline per
// Send: a write with a cancellable ctx (ctx.Done() != nil) only publishes
// ctx in wctx, under wmu, and arms the Client's probe timer if it is not
// ticking. The probe looks every writeProbe; a write it finds under way at
// two looks in a row has lasted at least writeProbe, as a write blocked on
// a full send buffer does, and the probe hands its ctx to the watcher
// goroutine, which sets a write deadline in the past once ctx ends. That
// deadline, the only one a Client sets, makes the blocked write return at
// once. The writer then takes wctx back and, if the watcher held it, sends
// unwatch (after which the watcher sets no deadline) and clears the
// deadline. A probe that finds no write under way, or hands one over,
// stops ticking until the next write.
func (c *Client) write(ctx context.Context, leaves []pytree.Array) (n int64, cancelled bool, err error) {
	for _, a := range leaves {
		if b := a.Bytes(); len(b) > 0 {
			c.vec = append(c.vec, b)
		}
	}
	return c.writeVec(ctx)
}

// writeVec is write of the byte slices in c.vec, which it clears.
func (c *Client) writeVec(ctx context.Context) (n int64, cancelled bool, err error) {
	c.bufs = c.vec
	cancellable := ctx.Done() != nil
	if cancellable {
		c.wmu.Lock()
		c.wctx = ctx
		c.wseq++
		if !c.ticking {
			c.ticking = true
			if c.probe == nil {
				c.probe = time.AfterFunc(writeProbe, c.lookAtWrite)
			} else {
				c.probe.Reset(writeProbe)
			}
		}
		c.wmu.Unlock()
	}
	n, err = c.bufs.WriteTo(c.conn)
	clear(c.vec)
	c.vec, c.bufs = c.vec[:0], nil
	if cancellable {
		c.wmu.Lock()
		c.wctx = nil
		watched := c.watched
		c.watched = false
		c.wmu.Unlock()
		if watched {
			c.unwatch <- struct{}{}
			c.conn.SetWriteDeadline(time.Time{})
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
			return n, true, ctx.Err()
		}
	}
	return n, false, err
}

// lookAtWrite is the probe timer's function (see write). It hands the
// write under way to the watcher if it is the one seen at the last look,
// and ticks on while writes go on and none is watched.
func (c *Client) lookAtWrite() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.done:
		c.ticking = false
		return
	default:
	}
	if c.wctx == nil {
		c.ticking = false
		return
	}
	if c.wseq == c.seenSeq && !c.watched {
		c.watchOnce.Do(func() { go c.watchWrites() })
		// The watcher is idle: the writer of the last write it watched
		// sent unwatch before this write began.
		select {
		case c.watch <- c.wctx:
			c.watched = true
			c.watches++
			c.ticking = false // the watcher has it; the next write re-arms
			return
		case <-c.done:
			c.ticking = false
			return
		}
	}
	c.seenSeq = c.wseq
	c.probe.Reset(writeProbe)
}

// watchWrites is the Client's watcher goroutine, started by the first probe
// that finds a long write. For each write handed to it, it waits for the
// write's end (unwatch) or for ctx's; on ctx's, it sets a write deadline in
// the past, which makes the write return, and still waits for unwatch,
// after which the writer clears the deadline. It ends with the connection.
func (c *Client) watchWrites() {
	defer close(c.watchEnd)
	for {
		select {
		case ctx := <-c.watch:
			select {
			case <-ctx.Done():
				c.conn.SetWriteDeadline(aLongTimeAgo)
				<-c.unwatch
			case <-c.unwatch:
			}
		case <-c.done:
			return
		}
	}
}

// rejected builds Send's and SendBatch's error for a tree that does not
// match the example: ErrSpecMismatch naming the leaf, as Submit's does. A
// tree of the wrong size differs in structure, dtype or shape, so its size
// needs no check of its own.
func (c *Client) rejected(_ any, err error) error { return mismatchError(err) }

// readAcks takes one token per ack byte until the connection ends; a
// reconnecting Client's then reconnects, and it reads on.
func (c *Client) readAcks() {
	defer close(c.readerEnd)
	for {
		c.connMu.Lock()
		conn := c.conn
		c.connMu.Unlock()
		err, broken := c.ackLoop(conn)
		select {
		case <-c.done:
			return
		default:
		}
		if c.rs == nil || broken {
			c.end(err)
			return
		}
		conn.Close() // a Send still writing to it fails now, its sample kept
		if err := c.reconnect(err); err != nil {
			c.end(err)
			return
		}
	}
}

// ackLoop reads acks from conn until it fails, and returns why, wrapping
// ErrConnectionClosed; broken says the server broke the protocol, which no
// reconnection mends.
func (c *Client) ackLoop(conn net.Conn) (err error, broken bool) {
	var buf [512]byte
	for {
		n, err := conn.Read(buf[:])
		for _, b := range buf[:n] {
			if b != wire.Ack {
				return fmt.Errorf("%w: server sent byte %#x, not an ack", ErrConnectionClosed, b), true
			}
		}
		if n > 0 {
			for range n {
				select {
				case <-c.tokens:
				default:
					return fmt.Errorf("%w: server acknowledged more samples than were sent", ErrConnectionClosed), true
				}
			}
			if c.rs != nil {
				c.rs.acked += uint64(n)
			}
			if c.inflight.Add(int64(-n)) == 0 {
				select {
				case c.idle <- struct{}{}:
				default:
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("server closed the connection")
			}
			return fmt.Errorf("%w: %w", ErrConnectionClosed, err), false
		}
	}
}

// end marks the Client finished with cause (the first cause wins) and
// closes the connection, which also stops the ack reader.
func (c *Client) end(cause error) {
	c.closeOnce.Do(func() {
		c.cause = cause
		close(c.done)
		c.endLife()
		c.connMu.Lock()
		c.conn.Close()
		c.connMu.Unlock()
	})
}

// closedErr returns why the connection ended. Only after done is closed.
func (c *Client) closedErr() error { return c.cause }

// Inflight returns the number of samples sent and not yet acknowledged.
func (c *Client) Inflight() int { return int(c.inflight.Load()) }

// Wait blocks until every sample sent has been acknowledged. It returns
// ErrConnectionClosed if the connection ends first with samples
// unacknowledged, and ctx's error if ctx is done first.
func (c *Client) Wait(ctx context.Context) error {
	for {
		if c.inflight.Load() == 0 {
			return nil
		}
		select {
		case <-c.idle:
			// One token per drain wakes one waiter: pass it on, so that
			// every Wait blocked at the same moment wakes. A token left
			// over only costs a later Wait one more look.
			if c.inflight.Load() == 0 {
				select {
				case c.idle <- struct{}{}:
				default:
				}
			}
		case <-c.done:
			if c.inflight.Load() == 0 {
				return nil
			}
			return c.closedErr()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close closes the connection without waiting for acknowledgements (call
// Wait first for that) and waits for the ack reader and the write watcher
// to stop. Samples in flight may or may not reach the server. Close is
// idempotent.
func (c *Client) Close() error {
	c.end(fmt.Errorf("%w: client closed", ErrConnectionClosed))
	<-c.readerEnd
	c.wmu.Lock()
	if c.probe != nil {
		c.probe.Stop() // a look already running sees done and stops
	}
	c.wmu.Unlock()
	c.watchOnce.Do(func() { close(c.watchEnd) }) // never started: never will
	<-c.watchEnd
	return nil
}
