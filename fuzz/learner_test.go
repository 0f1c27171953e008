package fuzz

import (
	"bytes"
	"testing"

	"github.com/seed-a9ef92a1/echo/wire"
)

// FuzzLearnerFrame: a frame from a hostile learner or server decodes to an
// error wrapping a sentinel, or to a frame that encodes back to the same
// bytes; BATCH and TAKE bodies decode and re-encode to themselves, and
// CheckLearnerHello accepts only the one hello.
func FuzzLearnerFrame(f *testing.F) {
	f.Add(wire.AppendLearnerHello(nil))
	f.Add(wire.AppendFrame(nil, wire.FrameNext, nil))
	f.Add(wire.AppendBatch(nil, &wire.BatchInfo{Ticket: 7, Slab: 2, Ints: [wire.InfoFields]int64{1, 2, 3}}))
	f.Add(wire.AppendTake(nil, 7))
	f.Add([]byte{0, 0, 0, 0, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, body, n, err := wire.DecodeFrame(b, 1<<20)
		if err != nil {
			v2Kind(t, err)
			return
		}
		if again := wire.AppendFrame(nil, typ, body); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoded % x from % x", again, b[:n])
		}
		if typ == wire.FrameBatch {
			if info, err := wire.DecodeBatch(body); err == nil {
				if again := wire.AppendBatch(nil, &info); !bytes.Equal(again, b[:n]) {
					t.Fatalf("batch re-encoded % x from % x", again, b[:n])
				}
			}
		}
		if typ == wire.FrameTake {
			if ticket, err := wire.DecodeTake(body); err == nil {
				if again := wire.AppendTake(nil, ticket); !bytes.Equal(again, b[:n]) {
					t.Fatalf("take re-encoded % x from % x", again, b[:n])
				}
			} else {
				v2Kind(t, err)
			}
		}
		if typ == wire.FrameHello && wire.CheckLearnerHello(body) == nil && !bytes.Equal(b[:n], wire.AppendLearnerHello(nil)) {
			t.Fatalf("hello % x accepted", b[:n])
		}
	})
}
