package pytree

import (
	"errors"
	"math"
	"slices"
	"testing"
	"unsafe"
)

// checkOfView wraps vals with Of, views them back, and checks that the view
// shares the slice's memory in both directions.
func checkOfView[T Element](t *testing.T, vals []T, other T, view func(Array) ([]T, error)) {
	t.Helper()
	dt := DTypeOf[T]()
	orig := slices.Clone(vals)
	a, err := Of(vals)
	if err != nil {
		t.Fatalf("%v: Of: %v", dt, err)
	}
	if a.DType() != dt || !slices.Equal(a.Shape(), []int{len(vals)}) || a.NumElements() != len(vals) ||
		a.NumBytes() != len(vals)*dt.Size() || len(a.Bytes()) != a.NumBytes() {
		t.Fatalf("%v: Of gave %v with %d elements, %d bytes", dt, a, a.NumElements(), a.NumBytes())
	}
	for name, get := range map[string]func(Array) ([]T, error){"View": View[T], "method": view} {
		got, err := get(a)
		if err != nil {
			t.Fatalf("%v: %s: %v", dt, name, err)
		}
		if !slices.Equal(got, orig) {
			t.Fatalf("%v: %s = %v, want %v", dt, name, got, orig)
		}
		vals[1] = other
		if got[1] != other {
			t.Errorf("%v: %s does not see a write to the original slice", dt, name)
		}
		got[0] = other
		if vals[0] != other {
			t.Errorf("%v: a write through %s does not reach the original slice", dt, name)
		}
		copy(vals, orig)
	}
	if unsafe.SliceData(a.Bytes()) != (*byte)(unsafe.Pointer(unsafe.SliceData(vals))) {
		t.Errorf("%v: Of copied the data", dt)
	}
	// Any other element type is refused.
	if dt != Uint8 {
		if _, err := View[uint8](a); !errors.Is(err, ErrDType) {
			t.Errorf("%v viewed as uint8: err = %v, want ErrDType", dt, err)
		}
	} else if _, err := View[bool](a); !errors.Is(err, ErrDType) {
		t.Errorf("uint8 viewed as bool: err = %v, want ErrDType", err)
	}
}

func TestOfViewRoundTrip(t *testing.T) {
	checkOfView(t, []bool{true, false, true}, false, Array.Bool)
	checkOfView(t, []int8{-128, 0, 127}, 5, Array.Int8)
	checkOfView(t, []int16{-32768, 1, 32767}, 5, Array.Int16)
	checkOfView(t, []int32{math.MinInt32, 2, math.MaxInt32}, 5, Array.Int32)
	checkOfView(t, []int64{math.MinInt64, 3, math.MaxInt64}, 5, Array.Int64)
	checkOfView(t, []uint8{0, 1, 255}, 5, Array.Uint8)
	checkOfView(t, []uint16{0, 1, 65535}, 5, Array.Uint16)
	checkOfView(t, []uint32{0, 1, math.MaxUint32}, 5, Array.Uint32)
	checkOfView(t, []uint64{0, 1, math.MaxUint64}, 5, Array.Uint64)
	checkOfView(t, []F16{F16From(1), F16From(-0.5), F16From(65504)}, F16From(3), Array.Float16)
	checkOfView(t, []BF16{BF16From(1), BF16From(-0.5), BF16From(1e30)}, BF16From(3), Array.BFloat16)
	checkOfView(t, []float32{1.5, -2.25, math.MaxFloat32}, 7, Array.Float32)
	checkOfView(t, []float64{1.5, -2.25, math.SmallestNonzeroFloat64}, 7, Array.Float64)
}

func TestOfShapes(t *testing.T) {
	a, err := Of(make([]float32, 48), 8, 6)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.String(); got != "float32[8 6]" {
		t.Errorf("String() = %q", got)
	}
	if _, err := Of(make([]float32, 47), 8, 6); !errors.Is(err, ErrShape) {
		t.Errorf("Of 47 elements as [8 6]: err = %v, want ErrShape", err)
	}
	shape := []int{4, 3}
	a = MustOf(make([]int32, 12), shape...)
	shape[0] = 99
	if !slices.Equal(a.Shape(), []int{4, 3}) {
		t.Errorf("Array shares the caller's shape slice: %v", a.Shape())
	}
	one := []int64{42}
	s := MustOf(one, []int{}...)
	if len(s.Shape()) != 0 || s.NumElements() != 1 || s.String() != "int64[]" {
		t.Errorf("Of with an empty shape gave %v with %d elements", s, s.NumElements())
	}
	empty, err := Of([]float64{})
	if err != nil || empty.NumElements() != 0 || empty.String() != "float64[0]" {
		t.Errorf("Of(empty) = %v, %v", empty, err)
	}
	if v, err := empty.Float64(); err != nil || len(v) != 0 {
		t.Errorf("view of empty array = %v, %v", v, err)
	}
	defer func() {
		if recover() == nil {
			t.Error("MustOf with a bad shape did not panic")
		}
	}()
	MustOf([]int8{1, 2, 3}, 2)
}

func TestScalar(t *testing.T) {
	s := Scalar(float32(2.5))
	if s.String() != "float32[]" || s.NumElements() != 1 || s.NumBytes() != 4 {
		t.Errorf("Scalar(2.5) = %v, %d elements, %d bytes", s, s.NumElements(), s.NumBytes())
	}
	if v, err := s.Float32(); err != nil || !slices.Equal(v, []float32{2.5}) {
		t.Errorf("Scalar(2.5) view = %v, %v", v, err)
	}
	if v, err := Scalar(true).Bool(); err != nil || !slices.Equal(v, []bool{true}) {
		t.Errorf("Scalar(true) view = %v, %v", v, err)
	}
}

func TestViewMisaligned(t *testing.T) {
	buf := alignedBytes(64)
	for _, c := range []struct {
		dt   DType
		view func(Array) error
	}{
		{Float32, func(a Array) error { _, err := a.Float32(); return err }},
		{Int64, func(a Array) error { _, err := View[int64](a); return err }},
		{Uint16, func(a Array) error { _, err := a.Uint16(); return err }},
		{BFloat16, func(a Array) error { _, err := a.BFloat16(); return err }},
	} {
		size := c.dt.Size()
		a, err := NewArray(c.dt, []int{4}, buf[1:1+4*size])
		if err != nil {
			t.Fatal(err)
		}
		if err := c.view(a); !errors.Is(err, ErrAlignment) {
			t.Errorf("%v view at offset 1: err = %v, want ErrAlignment", c.dt, err)
		}
		aligned, err := NewArray(c.dt, []int{4}, buf[size:5*size])
		if err != nil {
			t.Fatal(err)
		}
		if err := c.view(aligned); err != nil {
			t.Errorf("%v view at offset %d: %v", c.dt, size, err)
		}
	}
	// One-byte elements are never misaligned.
	a, err := NewArray(Int8, []int{3}, buf[1:4])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Int8(); err != nil {
		t.Errorf("int8 view at offset 1: %v", err)
	}
}

func TestViewZeroArray(t *testing.T) {
	var a Array
	if !a.IsZero() || a.NumElements() != 0 || a.NumBytes() != 0 {
		t.Errorf("zero Array: IsZero %v, %d elements, %d bytes", a.IsZero(), a.NumElements(), a.NumBytes())
	}
	if _, err := a.Float32(); !errors.Is(err, ErrDType) {
		t.Errorf("view of the zero Array: err = %v, want ErrDType", err)
	}
	if c := a.Copy(); !c.IsZero() {
		t.Errorf("Copy of the zero Array = %v", c)
	}
	if Scalar(int8(1)).IsZero() {
		t.Error("Scalar reports IsZero")
	}
}

func TestNewArrayErrors(t *testing.T) {
	huge := math.MaxInt/2 + 1
	cases := []struct {
		name  string
		dt    DType
		shape []int
		bytes int
		err   error
		// badShape is set when the dtype and shape alone are invalid, so
		// that Zeros fails too.
		badShape bool
	}{
		{"invalid dtype", Invalid, []int{2}, 2, ErrDType, true},
		{"dtype out of range", DType(99), []int{2}, 2, ErrDType, true},
		{"negative dim", Float32, []int{2, -1}, 0, ErrShape, true},
		{"negative dim beside zero", Float32, []int{0, -1}, 0, ErrShape, true},
		{"too few bytes", Float32, []int{2, 3}, 23, ErrShape, false},
		{"too many bytes", Float32, []int{2, 3}, 25, ErrShape, false},
		{"scalar with no bytes", Float64, []int{}, 0, ErrShape, false},
		{"elements overflow", Uint8, []int{huge, huge}, 0, ErrShape, true},
		{"bytes overflow", Float64, []int{huge / 4}, 0, ErrShape, true},
		{"overflow in the last dim", Int16, []int{1 << 20, 1 << 20, 1 << 30}, 0, ErrShape, true},
	}
	for _, c := range cases {
		a, err := NewArray(c.dt, c.shape, make([]byte, c.bytes))
		if !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
		if !a.IsZero() {
			t.Errorf("%s: returned a non-zero Array %v", c.name, a)
		}
		if _, err := Zeros(c.dt, c.shape...); c.badShape && !errors.Is(err, c.err) {
			t.Errorf("%s: Zeros err = %v, want %v", c.name, err, c.err)
		}
	}
	// A zero dimension makes an empty array, whatever the others are.
	a, err := NewArray(Float64, []int{huge, 0, huge}, nil)
	if err != nil || a.NumElements() != 0 {
		t.Errorf("shape with a zero dim: %v, %v", a, err)
	}
	a, err = NewArray(Float64, []int{}, make([]byte, 8))
	if err != nil || a.NumElements() != 1 {
		t.Errorf("scalar: %v, %v", a, err)
	}
}

func TestZerosAndCopy(t *testing.T) {
	z, err := Zeros(Float64, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	v, err := z.Float64()
	if err != nil || len(v) != 6 || slices.ContainsFunc(v, func(f float64) bool { return f != 0 }) {
		t.Fatalf("Zeros view = %v, %v", v, err)
	}
	v[4] = 9
	c := z.Copy()
	if c.String() != "float64[3 2]" {
		t.Errorf("Copy = %v", c)
	}
	cv, _ := c.Float64()
	v[4] = 10
	if cv[4] != 9 {
		t.Errorf("Copy shares data: copy sees %v", cv[4])
	}
	if &c.Shape()[0] == &z.Shape()[0] {
		t.Error("Copy shares the shape")
	}
	if _, err := Zeros(Invalid, 2); !errors.Is(err, ErrDType) {
		t.Errorf("Zeros(Invalid): err = %v", err)
	}
	s, err := Zeros(Int32)
	if err != nil || s.NumElements() != 1 || s.String() != "int32[]" {
		t.Errorf("Zeros(Int32) = %v, %v", s, err)
	}
}
