package pytree

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"unsafe"
)

// Array is a dense array: a dtype, a shape and the raw bytes of its elements
// in row-major (C) order. It is a value type; copying an Array copies the
// header, not the data, so copies share the data.
//
// The zero Array has no dtype and is not a valid leaf.
type Array struct {
	dtype DType
	shape []int  // never modified after the Array is built
	data  []byte // len(data) == product(shape) · dtype.Size()
}

// NewArray returns an Array over data, without copying it. It keeps its own
// copy of shape, so the caller may reuse theirs. It fails with an error
// wrapping ErrDType if dt is not valid, and with one wrapping ErrShape if a
// dimension is negative, if the byte size overflows int, or if len(data) is
// not the byte size of the shape.
func NewArray(dt DType, shape []int, data []byte) (Array, error) {
	n, err := byteSize(dt, shape)
	if err != nil {
		return Array{}, err
	}
	if len(data) != n {
		return Array{}, fmt.Errorf("%w: %s%v needs %d bytes, got %d", ErrShape, dt, shape, n, len(data))
	}
	return Array{dtype: dt, shape: slices.Clone(shape), data: data}, nil
}

// byteSize returns the number of bytes of an array of dtype dt and the given
// shape.
func byteSize(dt DType, shape []int) (int, error) {
	if !dt.Valid() {
		return 0, fmt.Errorf("%w: %v", ErrDType, dt)
	}
	empty := false
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: dimension %d of %v is negative", ErrShape, i, shape)
		}
		empty = empty || d == 0
	}
	if empty {
		return 0, nil
	}
	n := uint64(dt.Size())
	for _, d := range shape {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt {
			return 0, fmt.Errorf("%w: %s%v overflows int bytes", ErrShape, dt, shape)
		}
		n = lo
	}
	return int(n), nil
}

// Zeros returns a new zero-filled Array. Its data is 8-byte aligned, so every
// typed view of it succeeds.
func Zeros(dt DType, shape ...int) (Array, error) {
	n, err := byteSize(dt, shape)
	if err != nil {
		return Array{}, err
	}
	return Array{dtype: dt, shape: slices.Clone(shape), data: alignedBytes(n)}, nil
}

// Of returns an Array over the memory of data, without copying: writes
// through either are seen by the other. When shape is omitted (nil) the
// Array is one-dimensional of length len(data); otherwise the product of
// shape must be len(data), and a non-nil empty shape ([]int{}...) makes a
// scalar of a one-element slice. Scalar makes scalars from values.
func Of[T Element](data []T, shape ...int) (Array, error) {
	if shape == nil {
		shape = []int{len(data)}
	}
	return NewArray(DTypeOf[T](), shape, reinterpret[byte](data))
}

// MustOf is Of that panics on error; it is meant for examples and tests.
func MustOf[T Element](data []T, shape ...int) Array {
	a, err := Of(data, shape...)
	if err != nil {
		panic(err)
	}
	return a
}

// Scalar returns a shape-() Array holding v in memory of its own.
func Scalar[T Element](v T) Array {
	return Array{dtype: DTypeOf[T](), shape: []int{}, data: reinterpret[byte]([]T{v})}
}

// DType returns the dtype of a; Invalid for the zero Array.
func (a Array) DType() DType { return a.dtype }

// Shape returns the shape of a: empty for a scalar. It is the Array's own
// slice, shared by its copies: callers must not modify it.
func (a Array) Shape() []int { return a.shape }

// NumElements returns the number of elements: the product of the shape.
func (a Array) NumElements() int {
	if !a.dtype.Valid() {
		return 0
	}
	return len(a.data) / a.dtype.Size()
}

// NumBytes returns the size of the data in bytes.
func (a Array) NumBytes() int { return len(a.data) }

// Bytes returns the raw bytes of a, without copying.
func (a Array) Bytes() []byte { return a.data }

// IsZero reports whether a is the zero Array (it has no dtype).
func (a Array) IsZero() bool { return a.dtype == Invalid }

// Copy returns a deep copy of a: fresh, 8-byte aligned data and a fresh
// shape.
func (a Array) Copy() Array {
	if a.IsZero() {
		return Array{}
	}
	data := alignedBytes(len(a.data))
	copy(data, a.data)
	return Array{dtype: a.dtype, shape: slices.Clone(a.shape), data: data}
}

// String describes a by dtype and shape, without data: "float32[8 6]",
// "uint8[]" for a scalar.
func (a Array) String() string { return fmt.Sprintf("%v%v", a.dtype, a.shape) }

// View returns the elements of a as a []T over a's memory, without copying.
// It fails with an error wrapping ErrDType if T is not a's element type, and
// with one wrapping ErrAlignment if the data is not aligned for T (an Array
// made by NewArray over arbitrary bytes may not be). Bool views require each
// byte to be 0 or 1, as numpy writes them.
func View[T Element](a Array) ([]T, error) {
	want := DTypeOf[T]()
	if a.dtype != want {
		return nil, fmt.Errorf("%w: %v viewed as %v", ErrDType, a, want)
	}
	if len(a.data) == 0 {
		return []T{}, nil
	}
	var zero T
	if addr := uintptr(unsafe.Pointer(unsafe.SliceData(a.data))); addr%unsafe.Alignof(zero) != 0 {
		return nil, fmt.Errorf("%w: %v data at %#x, %v needs %d-byte alignment", ErrAlignment, a, addr, want, unsafe.Alignof(zero))
	}
	return reinterpret[T](a.data), nil
}

// Bool returns the elements of a bool Array; see View.
func (a Array) Bool() ([]bool, error) { return View[bool](a) }

// Int8 returns the elements of an int8 Array; see View.
func (a Array) Int8() ([]int8, error) { return View[int8](a) }

// Int16 returns the elements of an int16 Array; see View.
func (a Array) Int16() ([]int16, error) { return View[int16](a) }

// Int32 returns the elements of an int32 Array; see View.
func (a Array) Int32() ([]int32, error) { return View[int32](a) }

// Int64 returns the elements of an int64 Array; see View.
func (a Array) Int64() ([]int64, error) { return View[int64](a) }

// Uint8 returns the elements of a uint8 Array; see View.
func (a Array) Uint8() ([]uint8, error) { return View[uint8](a) }

// Uint16 returns the elements of a uint16 Array; see View.
func (a Array) Uint16() ([]uint16, error) { return View[uint16](a) }

// Uint32 returns the elements of a uint32 Array; see View.
func (a Array) Uint32() ([]uint32, error) { return View[uint32](a) }

// Uint64 returns the elements of a uint64 Array; see View.
func (a Array) Uint64() ([]uint64, error) { return View[uint64](a) }

// Float16 returns the elements of a float16 Array; see View.
func (a Array) Float16() ([]F16, error) { return View[F16](a) }

// BFloat16 returns the elements of a bfloat16 Array; see View.
func (a Array) BFloat16() ([]BF16, error) { return View[BF16](a) }

// Float32 returns the elements of a float32 Array; see View.
func (a Array) Float32() ([]float32, error) { return View[float32](a) }

// Float64 returns the elements of a float64 Array; see View.
func (a Array) Float64() ([]float64, error) { return View[float64](a) }

// reinterpret returns the memory of s as a []To, without copying. It is the
// only place that builds typed slices over raw memory. The caller guarantees
// that the memory is aligned for To and that its byte length is a multiple
// of To's size; every conversion here is then one that checkptr accepts.
func reinterpret[To, From any](s []From) []To {
	if len(s) == 0 {
		return nil
	}
	var from From
	var to To
	n := len(s) * int(unsafe.Sizeof(from)) / int(unsafe.Sizeof(to))
	return unsafe.Slice((*To)(unsafe.Pointer(unsafe.SliceData(s))), n)
}

// alignedBytes allocates n zero bytes aligned to 8, enough for every dtype.
func alignedBytes(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	return reinterpret[byte](make([]uint64, (n+7)/8))[:n]
}
