package pytree

import (
	"errors"
	"math"
	"testing"
)

func TestDTypeSizesAndNames(t *testing.T) {
	want := []struct {
		dt   DType
		name string
		size int
	}{
		{Bool, "bool", 1}, {Int8, "int8", 1}, {Int16, "int16", 2}, {Int32, "int32", 4},
		{Int64, "int64", 8}, {Uint8, "uint8", 1}, {Uint16, "uint16", 2}, {Uint32, "uint32", 4},
		{Uint64, "uint64", 8}, {Float16, "float16", 2}, {BFloat16, "bfloat16", 2},
		{Float32, "float32", 4}, {Float64, "float64", 8},
	}
	if len(want) != int(numDTypes)-1 {
		t.Fatalf("table covers %d dtypes, package has %d", len(want), numDTypes-1)
	}
	for _, w := range want {
		if got := w.dt.String(); got != w.name {
			t.Errorf("%d.String() = %q, want %q", w.dt, got, w.name)
		}
		if got := w.dt.Size(); got != w.size {
			t.Errorf("%v.Size() = %d, want %d", w.dt, got, w.size)
		}
		if !w.dt.Valid() {
			t.Errorf("%v.Valid() = false", w.dt)
		}
		parsed, err := ParseDType(w.name)
		if err != nil || parsed != w.dt {
			t.Errorf("ParseDType(%q) = %v, %v; want %v", w.name, parsed, err, w.dt)
		}
	}
	for _, dt := range []DType{Invalid, numDTypes, 200} {
		if dt.Valid() || dt.Size() != 0 {
			t.Errorf("%v: Valid() = %v, Size() = %d; want false, 0", dt, dt.Valid(), dt.Size())
		}
	}
	if got := Invalid.String(); got != "invalid" {
		t.Errorf("Invalid.String() = %q", got)
	}
	if got := DType(200).String(); got != "DType(200)" {
		t.Errorf("DType(200).String() = %q", got)
	}
}

func TestParseDTypeErrors(t *testing.T) {
	for _, name := range []string{"", "invalid", "float", "Float32", "f4", "int", "bool_"} {
		dt, err := ParseDType(name)
		if !errors.Is(err, ErrDType) || dt != Invalid {
			t.Errorf("ParseDType(%q) = %v, %v; want Invalid and ErrDType", name, dt, err)
		}
	}
}

func TestDTypeOf(t *testing.T) {
	got := []DType{
		DTypeOf[bool](), DTypeOf[int8](), DTypeOf[int16](), DTypeOf[int32](), DTypeOf[int64](),
		DTypeOf[uint8](), DTypeOf[uint16](), DTypeOf[uint32](), DTypeOf[uint64](),
		DTypeOf[F16](), DTypeOf[BF16](), DTypeOf[float32](), DTypeOf[float64](),
	}
	for i, dt := range got {
		if want := DType(i + 1); dt != want {
			t.Errorf("element type %d: DTypeOf = %v, want %v", i, dt, want)
		}
	}
}

func TestF16Conversions(t *testing.T) {
	inf := float32(math.Inf(1))
	cases := []struct {
		in   float32
		bits F16
	}{
		{1, 0x3c00},
		{-2, 0xc000},
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{65504, 0x7bff},                 // largest finite half
		{65520, 0x7c00},                 // halfway to the next power: ties to even, which is infinity
		{1 + 1.0/2048, 0x3c00},          // halfway between 1 and the next half: ties to even (down)
		{1 + 3.0/2048, 0x3c02},          // halfway, odd below: rounds up
		{1 + 1.0/4096, 0x3c00},          // below halfway: down
		{5.960464477539063e-08, 0x0001}, // smallest subnormal
		{inf, 0x7c00},
		{-inf, 0xfc00},
	}
	for _, c := range cases {
		if got := F16From(c.in); got != c.bits {
			t.Errorf("F16From(%v) = %#04x, want %#04x", c.in, got, c.bits)
		}
	}
	for _, bits := range []F16{0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0xfc00, 0x3555} {
		if back := F16From(bits.Float32()); back != bits {
			t.Errorf("F16 %#04x -> %v -> %#04x", bits, bits.Float32(), back)
		}
	}
	if got := F16(0x3c00).Float32(); got != 1 {
		t.Errorf("F16(0x3c00).Float32() = %v", got)
	}
	nan := F16From(float32(math.NaN()))
	if f := nan.Float32(); f == f {
		t.Errorf("F16From(NaN) = %#04x, which reads back as %v", nan, f)
	}
	// A NaN whose payload is only in the low bits must not become infinity.
	if f := F16From(math.Float32frombits(0x7f800001)).Float32(); f == f {
		t.Errorf("low-payload NaN became %v", f)
	}
}

func TestBF16Conversions(t *testing.T) {
	inf := float32(math.Inf(1))
	cases := []struct {
		in   float32
		bits BF16
	}{
		{1, 0x3f80},
		{-1, 0xbf80},
		{0, 0x0000},
		{inf, 0x7f80},
		{-inf, 0xff80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, even below: down
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, odd below: up
		{math.Float32frombits(0x3f808001), 0x3f81}, // above halfway: up
		{math.Float32frombits(0x3f807fff), 0x3f80}, // below halfway: down
		{math.MaxFloat32, 0x7f80},                  // rounds past the largest finite value
		{math.Float32frombits(0x7f7f7fff), 0x7f7f}, // largest value that stays finite
	}
	for _, c := range cases {
		if got := BF16From(c.in); got != c.bits {
			t.Errorf("BF16From(%v [%#08x]) = %#04x, want %#04x", c.in, math.Float32bits(c.in), got, c.bits)
		}
	}
	if got := BF16(0x3f80).Float32(); got != 1 {
		t.Errorf("BF16(0x3f80).Float32() = %v", got)
	}
	if got := BF16(0xc0a0).Float32(); got != -5 {
		t.Errorf("BF16(0xc0a0).Float32() = %v", got)
	}
	for _, bits := range []uint32{0x7fc00000, 0x7f800001, 0xff800001, 0x7f80ffff} {
		got := BF16From(math.Float32frombits(bits))
		if f := got.Float32(); f == f {
			t.Errorf("BF16From(NaN %#08x) = %#04x, which reads back as %v", bits, got, f)
		}
		if got>>15 != BF16(bits>>31) {
			t.Errorf("BF16From(NaN %#08x) = %#04x lost the sign", bits, got)
		}
	}
}
