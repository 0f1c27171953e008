// Package pytree handles samples shaped as trees of dense arrays: dtypes,
// Array (dtype, shape, raw bytes), typed views over raw memory, flattening in
// optree's order, and Spec, the structure plus leaf dtypes and shapes that
// every sample of a stream shares.
//
// A tree is built from map[string]any (a dict), []any (a list), Tuple, nil
// (an empty node, not a leaf) and Array leaves. Flatten order is optree's
// default: dict entries in sorted key order (Go byte-wise string order, the
// same as Python's sorted() for ASCII keys), lists and tuples in order, nil
// contributing no leaves.
package pytree

import (
	"fmt"
	"math"

	"github.com/x448/float16"
)

// DType is the element type of an Array. Names and sizes follow numpy.
type DType uint8

// The dtypes. The zero value, Invalid, is not a valid dtype.
const (
	Invalid DType = iota
	Bool
	Int8
	Int16
	Int32
	Int64
	Uint8
	Uint16
	Uint32
	Uint64
	Float16
	BFloat16
	Float32
	Float64
	numDTypes
)

// dtypeInfo holds each dtype's numpy name and element size in bytes,
// indexed by DType.
var dtypeInfo = [numDTypes]struct {
	name string
	size int
}{
	Invalid:  {"invalid", 0},
	Bool:     {"bool", 1},
	Int8:     {"int8", 1},
	Int16:    {"int16", 2},
	Int32:    {"int32", 4},
	Int64:    {"int64", 8},
	Uint8:    {"uint8", 1},
	Uint16:   {"uint16", 2},
	Uint32:   {"uint32", 4},
	Uint64:   {"uint64", 8},
	Float16:  {"float16", 2},
	BFloat16: {"bfloat16", 2},
	Float32:  {"float32", 4},
	Float64:  {"float64", 8},
}

// Valid reports whether d is one of the dtypes above other than Invalid.
func (d DType) Valid() bool { return d > Invalid && d < numDTypes }

// Size returns the size of one element in bytes, or 0 if d is not valid.
func (d DType) Size() int {
	if d >= numDTypes {
		return 0
	}
	return dtypeInfo[d].size
}

// String returns the numpy name of d ("float32", "bfloat16", ...), "invalid"
// for Invalid and "DType(n)" for values out of range.
func (d DType) String() string {
	if d >= numDTypes {
		return fmt.Sprintf("DType(%d)", uint8(d))
	}
	return dtypeInfo[d].name
}

// ParseDType returns the dtype with the given numpy name. An unknown name
// gives an error wrapping ErrDType.
func ParseDType(name string) (DType, error) {
	for d := Bool; d < numDTypes; d++ {
		if dtypeInfo[d].name == name {
			return d, nil
		}
	}
	return Invalid, fmt.Errorf("%w: unknown name %q", ErrDType, name)
}

// F16 is the element type of Float16 arrays: the bits of an IEEE 754
// binary16 number.
type F16 uint16

// F16From converts f to the nearest half-precision value (ties to even);
// NaN stays NaN and values beyond the half range become infinities.
func F16From(f float32) F16 { return F16(float16.Fromfloat32(f).Bits()) }

// Float32 returns h as a float32; the conversion is exact.
func (h F16) Float32() float32 { return float16.Frombits(uint16(h)).Float32() }

// BF16 is the element type of BFloat16 arrays: the top 16 bits of an IEEE 754
// binary32 number.
type BF16 uint16

// BF16From converts f to the nearest bfloat16 value (ties to even); NaN stays
// NaN and values beyond the bfloat16 range become infinities.
func BF16From(f float32) BF16 {
	bits := math.Float32bits(f)
	if f != f {
		// Truncating could clear every mantissa bit and yield an infinity:
		// keep the sign and set the quiet bit instead.
		return BF16(bits>>16 | 0x0040)
	}
	bits += 0x7fff + (bits>>16)&1
	return BF16(bits >> 16)
}

// Float32 returns b as a float32; the conversion is exact.
func (b BF16) Float32() float32 { return math.Float32frombits(uint32(b) << 16) }

// Element is the set of Go element types, one per dtype: bool, int8, int16,
// int32, int64, uint8, uint16, uint32, uint64, F16, BF16, float32 and
// float64. It lists exact types, not ~ approximations, so that DTypeOf maps
// each to exactly one dtype.
type Element interface {
	bool | int8 | int16 | int32 | int64 | uint8 | uint16 | uint32 | uint64 |
		F16 | BF16 | float32 | float64
}

// DTypeOf returns the dtype whose elements are of type T.
func DTypeOf[T Element]() DType {
	var zero T
	switch any(zero).(type) {
	case bool:
		return Bool
	case int8:
		return Int8
	case int16:
		return Int16
	case int32:
		return Int32
	case int64:
		return Int64
	case uint8:
		return Uint8
	case uint16:
		return Uint16
	case uint32:
		return Uint32
	case uint64:
		return Uint64
	case F16:
		return Float16
	case BF16:
		return BFloat16
	case float32:
		return Float32
	case float64:
		return Float64
	}
	panic("pytree: DTypeOf: type outside Element")
}
