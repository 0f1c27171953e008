package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The learner protocol (docs/learner.md): frames over a Unix-domain
// stream socket between a server and the learner processes that take its
// batches from shared memory. Every frame is
//
//	length u32 (the type byte and the body) | type u8 | body
//
// and the memfds of the ring and of the learner's offer page ride on the
// WELCOME frame as SCM_RIGHTS.
const (
	// LearnerMagic and LearnerVersion open a learner's HELLO.
	LearnerMagic         = "ECHL"
	LearnerVersion uint8 = 2
	FrameHeaderLen       = 5
	// MaxFrame bounds a frame's length: a SUBMIT carries one sample.
	MaxFrame = 64 << 20
)

// Frame types, learner → server then server → learner.
const (
	FrameHello           uint8 = 1
	FrameNext            uint8 = 2
	FrameSubmit          uint8 = 3
	FrameResetHistograms uint8 = 4
	FrameClose           uint8 = 5
	FrameRelease         uint8 = 6
	FrameTake            uint8 = 7

	FrameWelcome uint8 = 11
	FrameBatch   uint8 = 12
	FrameClosed  uint8 = 13
	FrameOK      uint8 = 14
	FrameError   uint8 = 15
)

// AppendFrame appends a frame of type typ and body to dst.
func AppendFrame(dst []byte, typ uint8, body []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(1+len(body)))
	dst = append(dst, typ)
	return append(dst, body...)
}

// FrameLen returns the length of the whole frame b begins with once b
// holds its header: ErrShort, unwrapped, before that; ErrMalformed for a
// length of 0 (no type byte); ErrLimit past max (at most MaxFrame).
func FrameLen(b []byte, max int) (int, error) {
	if len(b) < 4 {
		return 0, ErrShort
	}
	n := binary.LittleEndian.Uint32(b)
	switch {
	case n == 0:
		return 0, fmt.Errorf("%w: frame of length 0", ErrMalformed)
	case uint64(n) > uint64(min(max, MaxFrame)):
		return 0, fmt.Errorf("%w: frame of %d bytes, at most %d", ErrLimit, n, min(max, MaxFrame))
	}
	return 4 + int(n), nil
}

// DecodeFrame returns the type and body of the frame b begins with, and
// its length: ErrShort, unwrapped, until b holds all of it; FrameLen's
// errors otherwise. body aliases b.
func DecodeFrame(b []byte, max int) (typ uint8, body []byte, n int, err error) {
	n, err = FrameLen(b, max)
	if err != nil {
		return 0, nil, 0, err
	}
	if len(b) < n {
		return 0, nil, 0, ErrShort
	}
	return b[4], b[FrameHeaderLen:n], n, nil
}

// AppendHello appends a learner's HELLO frame.
func AppendLearnerHello(dst []byte) []byte {
	return AppendFrame(dst, FrameHello, append([]byte(LearnerMagic), LearnerVersion))
}

// CheckLearnerHello checks a HELLO frame's body: ErrBadMagic or a
// *VersionError.
func CheckLearnerHello(body []byte) error {
	if len(body) != len(LearnerMagic)+1 || string(body[:len(LearnerMagic)]) != LearnerMagic {
		return fmt.Errorf("%w: learner hello % x", ErrBadMagic, body)
	}
	if v := body[len(LearnerMagic)]; v != LearnerVersion {
		return &VersionError{Version: v}
	}
	return nil
}

// Welcome is the WELCOME frame's JSON body.
type Welcome struct {
	Protocol     int           `json:"protocol"`
	BatchSize    int           `json:"batch_size"`
	NumSlabs     int           `json:"num_slabs"`
	SlabBytes    int           `json:"slab_bytes"`
	MappingBytes int           `json:"mapping_bytes"`
	PayloadBytes int           `json:"payload_bytes"`
	Leaves       []LearnerLeaf `json:"leaves"`
	Tree         any           `json:"tree"`
	Port         int           `json:"port"`
	Memory       LearnerMemory `json:"memory"`
	// OfferBytes is the size of the offer page, the WELCOME's second memfd.
	OfferBytes int `json:"offer_bytes"`
}

// LearnerLeaf is one leaf of a WELCOME: its path, dtype, shape and the
// offset of its block within a slab.
type LearnerLeaf struct {
	Path   string `json:"path"`
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	Offset int    `json:"offset"`
}

// LearnerMemory says which pages the ring got.
type LearnerMemory struct {
	Kind          string `json:"kind"`
	Bytes         int    `json:"bytes"`
	HugePageBytes int    `json:"huge_page_bytes"`
}

// InfoFields is the number of integers of a BATCH's SampleInfo before its
// histograms; HistFields the fields of each of its three histograms.
const (
	InfoFields = 10
	HistFields = 7
	// BatchBodyLen is the length of a BATCH frame's body.
	BatchBodyLen = 8 + 4 + 8*InfoFields + 3*8*HistFields
	// TakeBodyLen is the length of a TAKE frame's body: a ticket.
	TakeBodyLen = 8
)

// The offer page: where a server sets the learner's next batch aside, as
// the body of the BATCH that would hand it out, so that the learner can
// take it without a round trip (docs/learner.md, "Offers"). The record of
// ticket t starts at OfferOffset(t); its first 8 bytes, the ticket, are
// written last.
const (
	OfferPageBytes = 4096
	offerStride    = 512
)

// OfferOffset is where in the offer page the record of ticket t starts:
// tickets alternate between two records, so that the record being written
// is never the one the learner read last.
func OfferOffset(ticket uint64) int { return int(ticket%2) * offerStride }

// Hist is one histogram of a BATCH, in nanoseconds.
type Hist struct {
	Count, Min, Max int64
	Mean            float64
	P50, P90, P99   int64
}

// BatchInfo is a BATCH frame's body: the ticket (1 for the first batch a
// connection is handed, then one more for each), the slab and echo's
// SampleInfo.
type BatchInfo struct {
	Ticket uint64
	Slab   uint32
	// StoreSize, ActiveConnections, QueueDepthSum, QueueDepthMax,
	// PushBlockedCount, SamplesInsertedTotal, NotifyCount,
	// CASSuccessTotal, CASFailureTotal, ReservationRetriesTotal.
	Ints                           [InfoFields]int64
	DrainRound, Memcpy, QueueDwell Hist
}

// AppendBatch appends a BATCH frame for b to dst.
func AppendBatch(dst []byte, b *BatchInfo) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, 1+BatchBodyLen)
	dst = append(dst, FrameBatch)
	return AppendBatchBody(dst, b)
}

// AppendBatchBody appends the body of a BATCH frame for b to dst.
func AppendBatchBody(dst []byte, b *BatchInfo) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, b.Ticket)
	dst = binary.LittleEndian.AppendUint32(dst, b.Slab)
	for _, v := range b.Ints {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(v))
	}
	for _, h := range []*Hist{&b.DrainRound, &b.Memcpy, &b.QueueDwell} {
		for _, v := range []int64{h.Count, h.Min, h.Max} {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(v))
		}
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.Mean))
		for _, v := range []int64{h.P50, h.P90, h.P99} {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(v))
		}
	}
	return dst
}

// DecodeBatch decodes a BATCH frame's body.
func DecodeBatch(body []byte) (BatchInfo, error) {
	var b BatchInfo
	if len(body) != BatchBodyLen {
		return b, fmt.Errorf("%w: batch body of %d bytes, want %d", ErrMalformed, len(body), BatchBodyLen)
	}
	b.Ticket = binary.LittleEndian.Uint64(body)
	b.Slab = binary.LittleEndian.Uint32(body[8:])
	off := 12
	next := func() uint64 {
		v := binary.LittleEndian.Uint64(body[off:])
		off += 8
		return v
	}
	for i := range b.Ints {
		b.Ints[i] = int64(next())
	}
	for _, h := range []*Hist{&b.DrainRound, &b.Memcpy, &b.QueueDwell} {
		h.Count, h.Min, h.Max = int64(next()), int64(next()), int64(next())
		h.Mean = math.Float64frombits(next())
		h.P50, h.P90, h.P99 = int64(next()), int64(next()), int64(next())
	}
	return b, nil
}

// AppendTake appends a TAKE frame for ticket to dst.
func AppendTake(dst []byte, ticket uint64) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, 1+TakeBodyLen)
	dst = append(dst, FrameTake)
	return binary.LittleEndian.AppendUint64(dst, ticket)
}

// DecodeTake decodes a TAKE frame's body: the ticket of the offer taken.
func DecodeTake(body []byte) (uint64, error) {
	if len(body) != TakeBodyLen {
		return 0, fmt.Errorf("%w: take body of %d bytes, want %d", ErrMalformed, len(body), TakeBodyLen)
	}
	return binary.LittleEndian.Uint64(body), nil
}
