package echo

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/sockio"
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
	// is gone: the server closed it, the network failed, or Close was
	// called.
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

// ClientOption configures Dial.
type ClientOption func(*clientConfig)

type clientConfig struct {
	maxInflight int
	limits      wire.Limits
	secret      []byte // nil: the server must not ask
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
// Send and Wait may be called from several goroutines; samples from one
// Client arrive in the order their Sends returned.
type Client struct {
	conn    net.Conn
	raw     syscall.RawConn
	spec    *pytree.Spec
	payload int

	// sendMu serialises Send. leaves, iov, iovPos and werr are its scratch.
	sendMu  sync.Mutex
	leaves  []pytree.Array
	many    []pytree.Array // SendBatch's scratch: the leaves of every tree
	iov     []unix.Iovec
	iovPos  int
	werr    error
	writeFn func(fd uintptr) bool // c.writev, bound once: no allocation per Send

	// tokens holds one token per sample in flight: Send puts, the ack
	// reader takes. Its capacity is max_inflight.
	tokens   chan struct{}
	inflight atomic.Int64
	// idle gets a token when inflight drops to zero; a Wait that takes it
	// puts it back for the next.
	idle chan struct{}
	// done is closed when the connection ends; cause says why.
	done      chan struct{}
	cause     error
	readerEnd chan struct{}
	closeOnce sync.Once
}

// Dial connects to the server at addr and checks its handshake against
// example, a tree shaped like the samples this client will send. addr is
// "host:port" for TCP, or "unix:" followed by a path for a Unix-domain
// socket. ctx bounds the connection and the handshake.
//
// Errors wrap ErrBadMagic when the peer is not an echo server, ErrVersion
// for another protocol version, and ErrSpecMismatch, naming the first
// differing leaf, when the server expects other samples.
func Dial(ctx context.Context, addr string, example any, opts ...ClientOption) (*Client, error) {
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", path
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("echo: dial %s: %w", addr, err)
	}
	c, err := NewClient(ctx, conn, example, opts...)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("echo: dial %s: %w", addr, err)
	}
	return c, nil
}

// NewClient is Dial over a connection the caller made: through a proxy, from
// another network namespace, with its own dialer. conn must be a stream
// with a file descriptor (*net.TCPConn, *net.UnixConn). NewClient reads and
// checks the handshake and returns errors as Dial does; on error the caller
// still owns conn, on success the Client does.
func NewClient(ctx context.Context, conn net.Conn, example any, opts ...ClientOption) (*Client, error) {
	cfg := clientConfig{maxInflight: DefaultMaxInflight}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.maxInflight < 1 {
		return nil, fmt.Errorf("%w: max inflight %d, must be at least 1", ErrBadConfig, cfg.maxInflight)
	}
	spec, err := pytree.SpecOf(example)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadExample, err)
	}
	want, err := wire.HandshakeOf(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadExample, err)
	}
	if _, ok := conn.(syscall.Conn); !ok {
		return nil, fmt.Errorf("%w: connection %T has no file descriptor", ErrBadConfig, conn)
	}
	return handshake(ctx, conn, spec, want, cfg)
}

// handshake reads the server's handshake from conn, checks it and builds
// the client.
func handshake(ctx context.Context, conn net.Conn, spec *pytree.Spec, want wire.Handshake, cfg clientConfig) (*Client, error) {
	// ctx bounds the read: its end sets a deadline in the past.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	got, err := readHandshake(conn, cfg)
	if !stop() || ctx.Err() != nil {
		return nil, fmt.Errorf("reading handshake: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, err
	}
	if err := want.Compare(got); err != nil {
		return nil, specMismatch(spec, want, got)
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("connection %T has no file descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &Client{
		conn:      conn,
		raw:       raw,
		spec:      spec,
		payload:   spec.PayloadBytes(),
		leaves:    make([]pytree.Array, 0, spec.NumLeaves()),
		iov:       make([]unix.Iovec, 0, spec.NumLeaves()),
		tokens:    make(chan struct{}, cfg.maxInflight),
		idle:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		readerEnd: make(chan struct{}),
	}
	c.writeFn = c.writev
	go c.readAcks()
	return c, nil
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
		if !equalShape(a.Shape, b.Shape) {
			return mismatchError(&pytree.MismatchError{Path: l.Path, What: "shape",
				Got: fmt.Sprint(a.Shape), Want: fmt.Sprint(b.Shape)})
		}
	}
	// Not reached while ReadHandshake accepts version 1 alone: Compare
	// found a difference, and it lies in the arrays.
	return fmt.Errorf("%w: server speaks version %d, this client %d", ErrVersion, got.Version, want.Version)
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Send writes one sample with a single writev of its leaves, straight from
// the caller's arrays. It waits first while max_inflight samples are
// unacknowledged. A tree of the wrong size returns ErrPayloadSize, one of
// the right size but another structure, dtype or shape ErrSpecMismatch;
// either way nothing is sent. Once the connection is gone Send returns
// ErrConnectionClosed.
//
// Send allocates nothing. When it returns, the sample's bytes are in the
// kernel, and the caller may reuse its arrays.
func (c *Client) Send(tree any) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	leaves, err := c.spec.FlattenInto(tree, c.leaves)
	if err != nil {
		clear(c.leaves[:cap(c.leaves)])
		return c.rejected(tree, err)
	}
	select {
	case <-c.done:
		clear(leaves)
		return c.closedErr()
	default:
	}
	select {
	case c.tokens <- struct{}{}:
	case <-c.done:
		clear(leaves)
		return c.closedErr()
	}
	c.inflight.Add(1)
	err = c.write(leaves)
	clear(leaves)
	return err
}

// SendBatch sends trees in order, as Send would one by one, but with one
// writev per max_inflight samples instead of one per sample: an actor
// stepping several environments at once pays the system call once. Every
// tree is checked before anything is sent; on a mismatch the error names
// the tree's index and nothing is sent. Like Send, it waits while too many
// samples are unacknowledged, and allocates nothing once its scratch has
// grown to the largest batch.
func (c *Client) SendBatch(trees []any) error {
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
	bound := cap(c.tokens)
	for len(all) > 0 {
		k := min(bound, len(all)/nl)
		for range k {
			select {
			case c.tokens <- struct{}{}:
			case <-c.done:
				return c.closedErr()
			}
		}
		c.inflight.Add(int64(k))
		if err := c.write(all[:k*nl]); err != nil {
			return err
		}
		all = all[k*nl:]
	}
	return nil
}

// write sends leaves with writev, straight from their memory.
func (c *Client) write(leaves []pytree.Array) error {
	c.iov = c.iov[:0]
	for _, a := range leaves {
		if b := a.Bytes(); len(b) > 0 {
			c.iov = append(c.iov, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
		}
	}
	c.iovPos, c.werr = 0, nil
	err := c.raw.Write(c.writeFn)
	clear(c.iov)
	if err == nil {
		err = c.werr
	}
	if err != nil {
		c.end(fmt.Errorf("%w: send: %w", ErrConnectionClosed, err))
		return c.closedErr()
	}
	return nil
}

// rejected builds Send's and SendBatch's error for a tree that does not
// match the example: ErrSpecMismatch naming the leaf, as Submit's does. A
// tree of the wrong size differs in structure, dtype or shape, so its size
// needs no check of its own.
func (c *Client) rejected(_ any, err error) error { return mismatchError(err) }

// writev is the RawConn.Write callback: it writes what is left of c.iov
// and returns false to wait for writability after a short write.
func (c *Client) writev(fd uintptr) bool {
	for c.iovPos < len(c.iov) {
		n, err := sockio.Writev(int(fd), c.iov[c.iovPos:])
		if err != nil {
			c.werr = err
			return true
		}
		if n == 0 {
			return false
		}
		rest := sockio.Advance(c.iov[c.iovPos:], n)
		c.iovPos = len(c.iov) - len(rest)
	}
	return true
}

// readAcks takes one token per ack byte until the connection ends.
func (c *Client) readAcks() {
	defer close(c.readerEnd)
	var buf [512]byte
	for {
		n, err := c.conn.Read(buf[:])
		for _, b := range buf[:n] {
			if b != wire.Ack {
				c.end(fmt.Errorf("%w: server sent byte %#x, not an ack", ErrConnectionClosed, b))
				return
			}
		}
		if n > 0 {
			for range n {
				select {
				case <-c.tokens:
				default:
					c.end(fmt.Errorf("%w: server acknowledged more samples than were sent", ErrConnectionClosed))
					return
				}
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
			c.end(fmt.Errorf("%w: %w", ErrConnectionClosed, err))
			return
		}
	}
}

// end marks the connection finished with cause (the first cause wins) and
// closes the socket, which also stops the ack reader.
func (c *Client) end(cause error) {
	c.closeOnce.Do(func() {
		c.cause = cause
		close(c.done)
		c.conn.Close()
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
// Wait first for that) and waits for the ack reader to stop. Samples in
// flight may or may not reach the server. Close is idempotent.
func (c *Client) Close() error {
	c.end(fmt.Errorf("%w: client closed", ErrConnectionClosed))
	<-c.readerEnd
	return nil
}
