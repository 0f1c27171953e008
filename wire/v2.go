package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// Version 2 is spoken only between peers that both speak it, after version
// 1's handshake, so that echo's clients and echo's server see version 1 byte
// for byte. docs/protocol.md has the whole exchange and the argument for
// why an echo client's sample is not taken for a probe.
//
//	server → client: version 1's handshake, as ever
//	client → server: Probe (8 bytes), only when a sample is longer than 8
//	                 bytes, so that an echo server holds it as part of a
//	                 sample and never as a whole one
//	server → client: Offer (8 bytes); an echo server sends nothing, and the
//	                 client falls back to version 1 on a new connection
//	client → server: Hello: "ECH2" | body_len u32 | body | crc32c(body) u32
//	                 body: version u8 = 2 | session [16] | num_leaves u32 |
//	                   per leaf: dtype_len u8 | dtype (numpy name) |
//	                   ndim u32 | dim u32 × ndim | path_len u16 | path
//	server → client: Reply: "ECH2" | status u8 | body_len u32 | body
//	                 StatusNew, StatusResumed: session [16] | committed u64
//	                 StatusRefused, StatusUnknownSession: a message (UTF-8)
//
// After an accepting reply the stream is version 1's: raw samples one way,
// one Ack per committed sample the other. A session's position is implicit:
// committed counts the samples of the session the server has put in its
// ring, over all its connections, so a client that reconnects resends from
// there and no sample carries a header.
const (
	// Version2 is the version of the typed, resumable exchange.
	Version2 uint8 = 2
	// ProbeLen is the length of Probe and of Offer.
	ProbeLen = 8
	// Probe opens version 2. Read as the start of a sample it is a float32
	// signalling NaN with a payload no arithmetic produces, then the bytes
	// 'E' '2' and two bytes that are not UTF-8; see docs/protocol.md.
	Probe = "\xa5\x3c\x9e\x7fE2\xd1\xff"
	// Offer is the server's answer to Probe: it speaks version 2.
	Offer = "ECHO\x02\x00\x00\x00"
	// SessionLen is the length of a session identifier.
	SessionLen = 16
	// MaxMessage bounds a refusal's message.
	MaxMessage = 4096

	// HelloHeaderLen is the length of a hello's header, which says how
	// long the whole hello is (HelloLen).
	HelloHeaderLen = len(v2Magic) + 4 // magic, body_len

	v2Magic      = "ECH2"
	helloHeadLen = HelloHeaderLen
	crcLen       = 4
	replyHeadLen = len(v2Magic) + 1 + 4
	acceptLen    = SessionLen + 8
)

// Reply statuses.
const (
	// StatusNew: the hello is accepted and a new session begins.
	StatusNew uint8 = 0
	// StatusResumed: the hello's session is resumed; Committed says where.
	StatusResumed uint8 = 1
	// StatusRefused: the hello describes other samples than the server's
	// (or is otherwise refused); Message says why, naming the leaf.
	StatusRefused uint8 = 2
	// StatusUnknownSession: the session to resume is not known: it
	// expired, or the server restarted. Its samples in flight may or may
	// not have arrived.
	StatusUnknownSession uint8 = 3
)

// SessionID names a session. The zero SessionID asks for a new one.
type SessionID [SessionLen]byte

// IsZero reports whether s is the zero SessionID.
func (s SessionID) IsZero() bool { return s == SessionID{} }

// Leaf describes one leaf for version 2: its path in the tree, its dtype's
// numpy name and its shape.
type Leaf struct {
	Path  string
	DType string
	Shape []int
}

// String returns the leaf's dtype and shape, such as "float32[8]".
func (l Leaf) String() string { return l.DType + shapeString(l.Shape) }

// Hello is a version 2 client's description of itself.
type Hello struct {
	Session SessionID // zero: a new session
	Leaves  []Leaf
}

// Reply is the server's answer to a Hello.
type Reply struct {
	Status    uint8
	Session   SessionID // StatusNew, StatusResumed
	Committed uint64    // StatusNew (0), StatusResumed
	Message   string    // StatusRefused, StatusUnknownSession
}

// Accepted reports whether the reply lets the client stream samples.
func (r Reply) Accepted() bool { return r.Status == StatusNew || r.Status == StatusResumed }

// LeavesOf returns the version 2 description of spec's leaves.
func LeavesOf(spec *pytree.Spec) []Leaf {
	ls := spec.Leaves()
	out := make([]Leaf, len(ls))
	for i, l := range ls {
		out[i] = Leaf{Path: l.Path, DType: l.DType.String(), Shape: l.Shape}
	}
	return out
}

// castagnoli is CRC-32C's table.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendHello appends h's encoding to dst. On error (a field too long for
// its length prefix) it returns dst unchanged and an error wrapping
// ErrLimit.
func AppendHello(dst []byte, h Hello) ([]byte, error) {
	start := len(dst)
	dst = append(dst, v2Magic...)
	dst = binary.LittleEndian.AppendUint32(dst, 0) // body_len, set below
	body := len(dst)
	dst = append(dst, Version2)
	dst = append(dst, h.Session[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(h.Leaves)))
	for i, l := range h.Leaves {
		if len(l.DType) > math.MaxUint8 || len(l.Path) > math.MaxUint16 || uint64(len(l.Shape)) > math.MaxUint32 {
			return dst[:start], fmt.Errorf("%w: leaf %d: a field is too long to encode", ErrLimit, i)
		}
		dst = append(dst, byte(len(l.DType)))
		dst = append(dst, l.DType...)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(l.Shape)))
		for _, d := range l.Shape {
			if d < 0 || uint64(d) > math.MaxUint32 {
				return dst[:start], fmt.Errorf("%w: leaf %d: dim %d", ErrLimit, i, d)
			}
			dst = binary.LittleEndian.AppendUint32(dst, uint32(d))
		}
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(l.Path)))
		dst = append(dst, l.Path...)
	}
	n := len(dst) - body
	if uint64(n) > math.MaxUint32 {
		return dst[:start], fmt.Errorf("%w: hello of %d bytes", ErrLimit, n)
	}
	binary.LittleEndian.PutUint32(dst[start+len(v2Magic):], uint32(n))
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[body:], castagnoli)), nil
}

// HelloLen returns the length of the whole hello that b begins with, once
// b holds its header: ErrShort before that, ErrBadMagic when b does not
// open a hello, ErrLimit when it is longer than lim.MaxHello allows. A
// reader reads that many bytes and then calls DecodeHello.
func HelloLen(b []byte, lim Limits) (int, error) {
	lim = lim.resolve()
	if len(b) < helloHeadLen {
		if !strings.HasPrefix(v2Magic, string(b[:min(len(b), len(v2Magic))])) {
			return 0, fmt.Errorf("%w: hello opens with % x", ErrBadMagic, b[:min(len(b), len(v2Magic))])
		}
		return 0, ErrShort
	}
	if string(b[:len(v2Magic)]) != v2Magic {
		return 0, fmt.Errorf("%w: hello opens with % x", ErrBadMagic, b[:len(v2Magic)])
	}
	n := binary.LittleEndian.Uint32(b[len(v2Magic):])
	if uint64(n) > uint64(lim.MaxHello) {
		return 0, fmt.Errorf("%w: hello of %d bytes, at most %d", ErrLimit, n, lim.MaxHello)
	}
	return helloHeadLen + int(n) + crcLen, nil
}

// DecodeHello decodes the hello that b begins with and returns it and its
// length. It returns ErrShort, unwrapped, while b holds less than the whole
// hello; ErrBadMagic, ErrLimit and ErrMalformed as their names say, with
// detail. The hello's leaves do not alias b.
func DecodeHello(b []byte, lim Limits) (Hello, int, error) {
	lim = lim.resolve()
	total, err := HelloLen(b, lim)
	if err != nil {
		return Hello{}, 0, err
	}
	if len(b) < total {
		return Hello{}, 0, ErrShort
	}
	body := b[helloHeadLen : total-crcLen]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[total-crcLen:]); got != want {
		return Hello{}, 0, fmt.Errorf("%w: hello checksum %#08x, body sums to %#08x", ErrMalformed, want, got)
	}
	d := decoder{b: body}
	if v := d.u8(); d.err == nil && v != Version2 {
		return Hello{}, 0, &VersionError{Version: v}
	}
	var h Hello
	copy(h.Session[:], d.bytes(SessionLen))
	n := d.u32()
	if d.err == nil && uint64(n) > uint64(lim.MaxArrays) {
		return Hello{}, 0, fmt.Errorf("%w: %d leaves, at most %d", ErrLimit, n, lim.MaxArrays)
	}
	if d.err == nil {
		// Each leaf takes at least 7 bytes: what is left bounds the count
		// before anything is allocated for it.
		if uint64(n)*7 > uint64(len(d.b)) {
			return Hello{}, 0, fmt.Errorf("%w: %d leaves in %d bytes", ErrMalformed, n, len(d.b))
		}
		h.Leaves = make([]Leaf, n)
	}
	for i := range h.Leaves {
		if d.err != nil {
			break
		}
		l := &h.Leaves[i]
		l.DType = string(d.bytes(int(d.u8())))
		ndim := d.u32()
		if d.err == nil && uint64(ndim) > uint64(lim.MaxDims) {
			return Hello{}, 0, fmt.Errorf("%w: leaf %d: %d dims, at most %d", ErrLimit, i, ndim, lim.MaxDims)
		}
		if d.err == nil && ndim > 0 {
			l.Shape = make([]int, ndim)
			for j := range l.Shape {
				l.Shape[j] = int(d.u32())
			}
		}
		l.Path = string(d.bytes(int(d.u16())))
	}
	if d.err != nil {
		return Hello{}, 0, fmt.Errorf("%w: hello body: %w", ErrMalformed, d.err)
	}
	if len(d.b) != 0 {
		return Hello{}, 0, fmt.Errorf("%w: %d bytes after the last leaf", ErrMalformed, len(d.b))
	}
	return h, total, nil
}

// AppendReply appends r's encoding to dst. A message longer than
// MaxMessage is cut there.
func AppendReply(dst []byte, r Reply) []byte {
	dst = append(dst, v2Magic...)
	dst = append(dst, r.Status)
	if r.Accepted() {
		dst = binary.LittleEndian.AppendUint32(dst, acceptLen)
		dst = append(dst, r.Session[:]...)
		return binary.LittleEndian.AppendUint64(dst, r.Committed)
	}
	msg := r.Message[:min(len(r.Message), MaxMessage)]
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(msg)))
	return append(dst, msg...)
}

// DecodeReply decodes the reply that b begins with and returns it and its
// length: ErrShort, unwrapped, while b holds less than the whole reply;
// ErrBadMagic, ErrMalformed and ErrLimit as their names say. A message is
// returned with its invalid UTF-8 and control characters replaced, since
// it comes from the peer and ends up in an error text.
func DecodeReply(b []byte) (Reply, int, error) {
	if len(b) < replyHeadLen {
		if !strings.HasPrefix(v2Magic, string(b[:min(len(b), len(v2Magic))])) {
			return Reply{}, 0, fmt.Errorf("%w: reply opens with % x", ErrBadMagic, b[:min(len(b), len(v2Magic))])
		}
		return Reply{}, 0, ErrShort
	}
	if string(b[:len(v2Magic)]) != v2Magic {
		return Reply{}, 0, fmt.Errorf("%w: reply opens with % x", ErrBadMagic, b[:len(v2Magic)])
	}
	r := Reply{Status: b[len(v2Magic)]}
	n := binary.LittleEndian.Uint32(b[len(v2Magic)+1:])
	switch {
	case r.Status > StatusUnknownSession:
		return Reply{}, 0, fmt.Errorf("%w: reply status %d", ErrMalformed, r.Status)
	case r.Accepted() && n != acceptLen:
		return Reply{}, 0, fmt.Errorf("%w: accepting reply of %d bytes, want %d", ErrMalformed, n, acceptLen)
	case n > MaxMessage:
		return Reply{}, 0, fmt.Errorf("%w: reply message of %d bytes, at most %d", ErrLimit, n, MaxMessage)
	}
	total := replyHeadLen + int(n)
	if len(b) < total {
		return Reply{}, 0, ErrShort
	}
	body := b[replyHeadLen:total]
	if r.Accepted() {
		copy(r.Session[:], body)
		r.Committed = binary.LittleEndian.Uint64(body[SessionLen:])
	} else {
		r.Message = printable(body)
	}
	return r, total, nil
}

// printable returns b as a string with invalid UTF-8 and control
// characters replaced by U+FFFD.
func printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return utf8.RuneError
		}
		return r
	}, strings.ToValidUTF8(string(b), string(utf8.RuneError)))
}

// CompareLeaves returns nil when the client's leaves (mine) are the
// server's, or an error wrapping ErrSpecMismatch that names the first leaf
// that differs and both values, the expected (server's) second:
// "obs: dtype float32, expected int32",
// "obs: shape [4], expected [8]",
// "leaf 1 is done, expected dones",
// "leaf count 3, expected 4".
func CompareLeaves(mine, server []Leaf) error {
	if msg := LeafMismatch(mine, server); msg != "" {
		return fmt.Errorf("%w: %s", ErrSpecMismatch, msg)
	}
	return nil
}

// LeafMismatch is CompareLeaves' text without the sentinel: "" when the
// leaves are the same. A server sends it in its refusal.
func LeafMismatch(mine, server []Leaf) string {
	for i := range min(len(mine), len(server)) {
		a, b := mine[i], server[i]
		switch {
		case a.Path != b.Path:
			return fmt.Sprintf("leaf %d is %s, expected %s", i, pathName(a.Path), pathName(b.Path))
		case a.DType != b.DType:
			return fmt.Sprintf("%s: dtype %s, expected %s", pathName(a.Path), a.DType, b.DType)
		case !slices.Equal(a.Shape, b.Shape):
			return fmt.Sprintf("%s: shape %s, expected %s", pathName(a.Path), shapeString(a.Shape), shapeString(b.Shape))
		}
	}
	if len(mine) != len(server) {
		return fmt.Sprintf("leaf count %d, expected %d", len(mine), len(server))
	}
	return ""
}

// pathName names a leaf path in messages; the root has the empty path.
func pathName(p string) string {
	if p == "" {
		return "<root>"
	}
	return p
}

// decoder reads little-endian fields off the front of b; the first short
// read sets err and every later read returns zeros.
type decoder struct {
	b   []byte
	err error
}

var errTruncated = errors.New("truncated")

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n > len(d.b) {
		d.err = errTruncated
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) u8() uint8 {
	if b := d.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if b := d.bytes(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}
