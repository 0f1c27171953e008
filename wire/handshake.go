// Package wire encodes and decodes echo's TCP wire protocol: version 1,
// echo's own, below, and version 2, this package's typed and resumable
// extension of it (v2.go), which peers speak only when both do.
//
// Bytes cross a connection in this order; integers are little-endian u32
// unless noted:
//
//	server → client, once, as soon as the connection is accepted:
//	  "ECHO" | version u8 = 1 | num_arrays u32 |
//	    per array: dtype_size u32 | ndim u32 | dim u32 × ndim
//	client → server, repeatedly, with no framing at all:
//	  one sample = the raw bytes of every leaf, concatenated in flatten
//	  order: exactly PayloadSize bytes
//	server → client, once per sample accepted: Ack (0x01)
//
// The client sends nothing of its own before its first sample: it checks the
// handshake against its example tree and closes the connection on mismatch.
// Version 1 carries dtype sizes, not dtypes, so float32 and int32 leaves
// look the same on the wire.
//
// Everything here is a pure function over byte slices except ReadHandshake,
// which reads one handshake from an io.Reader. Decoders bound what they accept
// from a hostile peer with Limits, and never allocate more than a small
// multiple of the bytes they were given.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// Protocol constants.
const (
	// Magic opens every handshake.
	Magic = "ECHO"
	// Version1 is the only version this package speaks.
	Version1 uint8 = 1
	// Ack is the byte the server sends for each sample it accepts.
	Ack byte = 0x01
)

// Encoded sizes, in bytes.
const (
	headerLen    = len(Magic) + 1 + 4 // magic, version, num_arrays
	arrayHeadLen = 4 + 4              // dtype_size, ndim
	dimLen       = 4                  // one dim
)

// Errors. Decoders wrap them with detail; test with errors.Is.
var (
	// ErrBadMagic: the peer's first bytes are not "ECHO"; it is not an echo
	// server, or not one this package understands.
	ErrBadMagic = errors.New("wire: bad magic")
	// ErrVersion: the handshake carries a version other than Version1. The
	// error is a *VersionError naming the version seen.
	ErrVersion = errors.New("wire: unsupported version")
	// ErrShort: the input ends inside a handshake. More bytes may complete
	// it; DecodeHandshake returns this sentinel itself, unwrapped, so that a
	// caller retrying after every read allocates nothing.
	ErrShort = errors.New("wire: short handshake")
	// ErrLimit: a count or size exceeds Limits, or overflows.
	ErrLimit = errors.New("wire: limit exceeded")
	// ErrMalformed: a field holds a value no valid handshake or spec holds.
	ErrMalformed = errors.New("wire: malformed")
	// ErrSpecMismatch: two handshakes describe different samples.
	ErrSpecMismatch = errors.New("wire: spec mismatch")
)

// VersionError reports a handshake version this package does not speak.
// It matches ErrVersion under errors.Is.
type VersionError struct {
	Version uint8 // the version seen
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: unsupported version %d (this side speaks %d)", e.Version, Version1)
}

// Unwrap returns ErrVersion.
func (e *VersionError) Unwrap() error { return ErrVersion }

// Limits bound what a decoder accepts from a hostile peer. A field that is
// zero (or negative) takes its value from DefaultLimits, so the zero Limits
// means DefaultLimits.
type Limits struct {
	// MaxArrays bounds num_arrays, the number of leaves per sample.
	MaxArrays int
	// MaxDims bounds ndim, the rank of one leaf.
	MaxDims int
	// MaxPayload bounds the payload size, the bytes of one sample, and with
	// it the size of any one array.
	MaxPayload int64
	// MaxHello bounds the body of a version 2 hello, in bytes.
	MaxHello int
}

// DefaultLimits are generous for real sample trees and small enough that a
// hostile handshake cannot make a decoder or its caller hold much memory.
var DefaultLimits = Limits{
	// An RL sample tree has tens of leaves; thousands would be a generated
	// tree gone wrong. 4096 ArraySpecs take 128 KiB.
	MaxArrays: 4096,
	// numpy 1.x caps ndim at 32 (NPY_MAXDIMS); numpy 2 raised the cap to 64,
	// but leaves of rank above 32 do not occur in practice.
	MaxDims: 32,
	// Each side holds at least one whole sample (the server stages it
	// before acking, an Assembler buffers a split one), and a ring holds
	// many. 1 GiB is far beyond any real observation, and caps the buffer
	// a hostile handshake can make its reader allocate.
	MaxPayload: 1 << 30,
	// A hello names every leaf: 64 KiB holds hundreds of leaves with long
	// paths, and a server raises it for its own tree when that needs more.
	MaxHello: 64 << 10,
}

// resolve fills zero fields from DefaultLimits. MaxPayload is also clamped
// to math.MaxInt so that any payload that passes fits an int.
func (l Limits) resolve() Limits {
	if l.MaxArrays <= 0 {
		l.MaxArrays = DefaultLimits.MaxArrays
	}
	if l.MaxDims <= 0 {
		l.MaxDims = DefaultLimits.MaxDims
	}
	if l.MaxPayload <= 0 {
		l.MaxPayload = DefaultLimits.MaxPayload
	}
	if l.MaxHello <= 0 {
		l.MaxHello = DefaultLimits.MaxHello
	}
	l.MaxPayload = min(l.MaxPayload, math.MaxInt)
	return l
}

// ArraySpec describes one leaf: the size of its element type and its shape.
type ArraySpec struct {
	DTypeSize int   // bytes per element, >= 1
	Shape     []int // each dim >= 0; empty for a scalar
}

// Bytes returns the size of the array in bytes, prod(Shape)·DTypeSize. An
// array with a zero dim is 0 bytes whatever its other dims. The error wraps
// ErrMalformed for a DTypeSize below 1 or a negative dim, and ErrLimit when
// the size overflows int64.
func (a ArraySpec) Bytes() (int64, error) {
	n, f := a.size(math.MaxInt64)
	if f.kind != nil {
		return 0, f.err()
	}
	return n, nil
}

// size returns the array's byte size, or a fault when a field is out of
// range or the size exceeds limit.
func (a ArraySpec) size(limit int64) (int64, fault) {
	if a.DTypeSize < 1 {
		return 0, fault{ErrMalformed, fmt.Sprintf("dtype size %d, want >= 1", a.DTypeSize)}
	}
	empty := false
	for j, d := range a.Shape {
		if d < 0 {
			return 0, fault{ErrMalformed, fmt.Sprintf("dim %d is %d, want >= 0", j, d)}
		}
		empty = empty || d == 0
	}
	if empty {
		return 0, fault{}
	}
	n, ok := mulBounded(int64(a.DTypeSize), 1, limit)
	for _, d := range a.Shape {
		if !ok {
			break
		}
		n, ok = mulBounded(n, int64(d), limit)
	}
	if !ok {
		return 0, fault{ErrLimit, fmt.Sprintf("shape %v × dtype size %d exceeds %d bytes", a.Shape, a.DTypeSize, limit)}
	}
	return n, fault{}
}

// mulBounded returns a·b and true when a, b >= 0 and a·b <= limit;
// otherwise false. It never overflows.
func mulBounded(a, b, limit int64) (int64, bool) {
	if b == 0 {
		return 0, true
	}
	if a > limit/b {
		return 0, false
	}
	return a * b, true
}

// fault is a sentinel and its detail, built where the detail is known and
// turned into an error where the context (an array index) is known.
type fault struct {
	kind   error // nil when there is no fault
	detail string
}

func (f fault) err() error { return fmt.Errorf("%w: %s", f.kind, f.detail) }

func (f fault) at(i int) error { return fmt.Errorf("%w: array %d: %s", f.kind, i, f.detail) }

// Handshake is the server's description of one sample: its leaves in flatten
// order.
type Handshake struct {
	Version uint8
	Arrays  []ArraySpec
}

// PayloadSize returns the bytes of one sample, Σ prod(shape)·dtype_size. The
// error wraps ErrLimit when the size exceeds lim.MaxPayload (zero lim means
// DefaultLimits), and ErrMalformed when a spec holds a negative dim or a
// dtype size below 1.
func (h Handshake) PayloadSize(lim Limits) (int64, error) {
	lim = lim.resolve()
	var total int64
	for i, a := range h.Arrays {
		n, f := a.size(lim.MaxPayload)
		if f.kind != nil {
			return 0, f.at(i)
		}
		if n > lim.MaxPayload-total {
			return 0, fmt.Errorf("%w: payload exceeds %d bytes at array %d", ErrLimit, lim.MaxPayload, i)
		}
		total += n
	}
	return total, nil
}

// Equal reports whether h and o have the same version and the same arrays.
// A nil shape equals an empty one.
func (h Handshake) Equal(o Handshake) bool {
	if h.Version != o.Version || len(h.Arrays) != len(o.Arrays) {
		return false
	}
	for i, a := range h.Arrays {
		b := o.Arrays[i]
		if a.DTypeSize != b.DTypeSize || !slices.Equal(a.Shape, b.Shape) {
			return false
		}
	}
	return true
}

// Compare returns nil when h and peer are Equal, or an error wrapping
// ErrSpecMismatch that names the first difference with both values, h's
// first: "2 arrays, peer has 3", "array 3: shape [8 6], peer has [8 5]",
// "array 1: dtype size 4, peer has 8" or "version 1, peer has 2".
func (h Handshake) Compare(peer Handshake) error {
	if h.Version != peer.Version {
		return fmt.Errorf("%w: version %d, peer has %d", ErrSpecMismatch, h.Version, peer.Version)
	}
	if len(h.Arrays) != len(peer.Arrays) {
		return fmt.Errorf("%w: %d arrays, peer has %d", ErrSpecMismatch, len(h.Arrays), len(peer.Arrays))
	}
	for i, a := range h.Arrays {
		b := peer.Arrays[i]
		if a.DTypeSize != b.DTypeSize {
			return fmt.Errorf("%w: array %d: dtype size %d, peer has %d", ErrSpecMismatch, i, a.DTypeSize, b.DTypeSize)
		}
		if !slices.Equal(a.Shape, b.Shape) {
			return fmt.Errorf("%w: array %d: shape %v, peer has %v", ErrSpecMismatch, i, shapeString(a.Shape), shapeString(b.Shape))
		}
	}
	return nil
}

// shapeString formats a shape as "[8 6]"; nil prints as "[]".
func shapeString(s []int) string {
	if s == nil {
		return "[]"
	}
	return fmt.Sprint(s)
}

// EncodedLen returns the length of h's encoding.
func (h Handshake) EncodedLen() int {
	n := headerLen + len(h.Arrays)*arrayHeadLen
	for _, a := range h.Arrays {
		n += len(a.Shape) * dimLen
	}
	return n
}

// AppendHandshake appends the encoding of h to dst. It checks every field
// first and, on error, returns dst unchanged:
//   - Version must be Version1 (else a *VersionError);
//   - DTypeSize must be at least 1 and dims at least 0 (else ErrMalformed);
//     a zero-sized element matches no array leaf, and the protocol has no
//     sign to carry;
//   - every count, dtype size and dim must fit a u32 (else ErrLimit).
//
// DTypeSize has no upper bound below u32: numpy's structured and void dtypes
// can be wider than any numeric one, and echo's peer compares it for
// equality only. AppendHandshake does not apply Limits: the side that
// decodes does.
func AppendHandshake(dst []byte, h Handshake) ([]byte, error) {
	if h.Version != Version1 {
		return dst, &VersionError{Version: h.Version}
	}
	if uint64(len(h.Arrays)) > math.MaxUint32 {
		return dst, fmt.Errorf("%w: %d arrays do not fit a u32", ErrLimit, len(h.Arrays))
	}
	for i, a := range h.Arrays {
		if a.DTypeSize < 1 {
			return dst, fmt.Errorf("%w: array %d: dtype size %d, want >= 1", ErrMalformed, i, a.DTypeSize)
		}
		if uint64(a.DTypeSize) > math.MaxUint32 {
			return dst, fmt.Errorf("%w: array %d: dtype size %d does not fit a u32", ErrLimit, i, a.DTypeSize)
		}
		if uint64(len(a.Shape)) > math.MaxUint32 {
			return dst, fmt.Errorf("%w: array %d: %d dims do not fit a u32", ErrLimit, i, len(a.Shape))
		}
		for j, d := range a.Shape {
			if d < 0 {
				return dst, fmt.Errorf("%w: array %d: dim %d is %d, want >= 0", ErrMalformed, i, j, d)
			}
			if uint64(d) > math.MaxUint32 {
				return dst, fmt.Errorf("%w: array %d: dim %d is %d, does not fit a u32", ErrLimit, i, j, d)
			}
		}
	}
	le := binary.LittleEndian
	dst = slices.Grow(dst, h.EncodedLen())
	dst = append(dst, Magic...)
	dst = append(dst, h.Version)
	dst = le.AppendUint32(dst, uint32(len(h.Arrays)))
	for _, a := range h.Arrays {
		dst = le.AppendUint32(dst, uint32(a.DTypeSize))
		dst = le.AppendUint32(dst, uint32(len(a.Shape)))
		for _, d := range a.Shape {
			dst = le.AppendUint32(dst, uint32(d))
		}
	}
	return dst, nil
}

// DecodeHandshake parses one handshake from the front of b and returns it
// with the number of bytes it used; bytes after the handshake are left alone.
// Zero lim means DefaultLimits.
//
// When b holds a prefix of a handshake that is valid so far, DecodeHandshake
// returns ErrShort: read more and call again with the longer slice. Otherwise
// the error wraps ErrBadMagic (checked on as many bytes of magic as b holds),
// ErrVersion (a *VersionError), ErrLimit (num_arrays, ndim or the payload
// size over lim; a dim or dtype size that does not fit an int) or
// ErrMalformed (a dtype size of 0). Fields are checked in the order they
// arrive, so a prefix of any input fails with ErrShort or with the same error
// as the whole.
//
// DecodeHandshake never panics. It checks the whole handshake before it
// allocates anything, so declared counts cannot make it allocate more than
// the bytes present justify; a valid handshake costs two allocations (the
// Arrays slice, and one backing array shared by every Shape, each Shape
// capped to its own length), or fewer when there are no arrays or no dims.
func DecodeHandshake(b []byte, lim Limits) (Handshake, int, error) {
	s := scanner{lim: lim.resolve()}
	numArrays, err := s.header(b)
	if err != nil {
		return Handshake{}, 0, err
	}
	off := headerLen
	for i := range numArrays {
		if len(b)-off < arrayHeadLen {
			return Handshake{}, 0, ErrShort
		}
		dtype, ndim, err := s.arrayHead(b[off:off+arrayHeadLen], i)
		if err != nil {
			return Handshake{}, 0, err
		}
		off += arrayHeadLen
		if (len(b)-off)/dimLen < ndim {
			return Handshake{}, 0, ErrShort
		}
		if err := s.arrayDims(b[off:off+ndim*dimLen], i, dtype); err != nil {
			return Handshake{}, 0, err
		}
		off += ndim * dimLen
	}
	return build(b[:off], numArrays, s.dims), off, nil
}

// scanner checks a handshake piece by piece as its bytes arrive, keeping the
// running totals that later pieces are checked against. DecodeHandshake and
// ReadHandshake share it, so they accept and reject the same inputs.
type scanner struct {
	lim   Limits // resolved
	total int64  // payload bytes of the arrays checked so far
	dims  int    // dims of the arrays checked so far
}

// header checks the fixed header at the front of b, which may be shorter
// than headerLen, and returns num_arrays.
func (s *scanner) header(b []byte) (int, error) {
	k := min(len(b), len(Magic))
	if string(b[:k]) != Magic[:k] {
		return 0, fmt.Errorf("%w: got %q, want %q", ErrBadMagic, b[:k], Magic)
	}
	if len(b) <= len(Magic) {
		return 0, ErrShort
	}
	if v := b[len(Magic)]; v != Version1 {
		return 0, &VersionError{Version: v}
	}
	if len(b) < headerLen {
		return 0, ErrShort
	}
	n := binary.LittleEndian.Uint32(b[len(Magic)+1:])
	if uint64(n) > uint64(s.lim.MaxArrays) {
		return 0, fmt.Errorf("%w: %d arrays, limit %d", ErrLimit, n, s.lim.MaxArrays)
	}
	return int(n), nil
}

// arrayHead checks the arrayHeadLen bytes of array i's dtype_size and ndim.
func (s *scanner) arrayHead(b []byte, i int) (dtype int64, ndim int, err error) {
	d := binary.LittleEndian.Uint32(b)
	n := binary.LittleEndian.Uint32(b[4:])
	if d == 0 {
		return 0, 0, fmt.Errorf("%w: array %d: dtype size 0", ErrMalformed, i)
	}
	if uint64(d) > math.MaxInt {
		return 0, 0, fmt.Errorf("%w: array %d: dtype size %d does not fit an int", ErrLimit, i, d)
	}
	if uint64(n) > uint64(s.lim.MaxDims) {
		return 0, 0, fmt.Errorf("%w: array %d: %d dims, limit %d", ErrLimit, i, n, s.lim.MaxDims)
	}
	return int64(d), int(n), nil
}

// arrayDims checks the dims of array i, whose element size is dtype, and adds
// its size to the running payload.
func (s *scanner) arrayDims(b []byte, i int, dtype int64) error {
	empty := false
	for j := 0; j < len(b); j += dimLen {
		d := binary.LittleEndian.Uint32(b[j:])
		if uint64(d) > math.MaxInt {
			return fmt.Errorf("%w: array %d: dim %d is %d, does not fit an int", ErrLimit, i, j/dimLen, d)
		}
		empty = empty || d == 0
	}
	s.dims += len(b) / dimLen
	if empty {
		return nil
	}
	room := s.lim.MaxPayload - s.total
	n, ok := mulBounded(dtype, 1, room)
	for j := 0; ok && j < len(b); j += dimLen {
		n, ok = mulBounded(n, int64(binary.LittleEndian.Uint32(b[j:])), room)
	}
	if !ok {
		return fmt.Errorf("%w: array %d: payload exceeds %d bytes", ErrLimit, i, s.lim.MaxPayload)
	}
	s.total += n
	return nil
}

// build decodes a handshake that a scanner has accepted whole: b is exactly
// its bytes, with numArrays arrays and numDims dims in all.
func build(b []byte, numArrays, numDims int) Handshake {
	le := binary.LittleEndian
	arrays := make([]ArraySpec, numArrays)
	var dims []int
	if numDims > 0 {
		dims = make([]int, numDims)
	}
	off := headerLen
	for i := range arrays {
		dtype := int(le.Uint32(b[off:]))
		ndim := int(le.Uint32(b[off+4:]))
		off += arrayHeadLen
		var shape []int
		if ndim > 0 {
			shape, dims = dims[:ndim:ndim], dims[ndim:]
			for j := range shape {
				shape[j] = int(le.Uint32(b[off:]))
				off += dimLen
			}
		}
		arrays[i] = ArraySpec{DTypeSize: dtype, Shape: shape}
	}
	return Handshake{Version: b[len(Magic)], Arrays: arrays}
}

// HandshakeOf describes samples of spec on the wire (version 1): every
// leaf's dtype size and shape, in flatten order. It fails for a spec whose
// payload overflows.
func HandshakeOf(spec *pytree.Spec) (Handshake, error) {
	h := Handshake{Version: Version1}
	for _, l := range spec.Leaves() {
		h.Arrays = append(h.Arrays, ArraySpec{DTypeSize: l.DType.Size(), Shape: l.Shape})
	}
	if _, err := h.PayloadSize(Limits{MaxPayload: math.MaxInt64}); err != nil {
		return h, err
	}
	return h, nil
}
