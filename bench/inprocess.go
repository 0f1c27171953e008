package bench

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// SubmitSample measures the in-process path: one op is batchSize Submit
// calls and the Sample that takes the batch, on a server with opts. x_copy
// is its bandwidth as a fraction of CopyCeiling's.
func SubmitSample(b *testing.B, w Workload, opts ...echo.Option) {
	sample := w.MustSample(1)
	s, err := echo.NewServer(sample, w.BatchSize, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.SetBytes(int64(w.BatchSize * w.PayloadBytes))
	b.ReportAllocs()
	for b.Loop() {
		for range w.BatchSize {
			if err := s.Submit(ctx, sample); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := s.Sample(ctx); err != nil {
			b.Fatal(err)
		}
	}
	reportRates(b, w, float64(b.N*w.BatchSize))
}

// CopyBatches is the in-process ceiling: plain copy() of the same leaves
// into a buffer the size of the server's ring (3 slabs), slot after slot,
// with the same per-leaf block layout a slab has. One op is one batch.
func CopyBatches(b *testing.B, w Workload) {
	c := newCopier(w)
	b.SetBytes(int64(w.BatchSize * w.PayloadBytes))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c.batch()
	}
	b.ReportMetric(float64(b.N*w.BatchSize)/b.Elapsed().Seconds(), "samples/s")
}

// copier copies a sample's leaves into slab-shaped Go memory, the same
// bytes and layout the ring receives, with none of the ring's bookkeeping.
type copier struct {
	leaves    [][]byte
	slabs     [][][]byte // slab, leaf -> block
	batchSize int
	next      int
}

func newCopier(w Workload) *copier {
	sample := w.MustSample(1)
	leaves, _, err := pytree.Flatten(sample)
	if err != nil {
		panic(err)
	}
	c := &copier{batchSize: w.BatchSize}
	for _, l := range leaves {
		c.leaves = append(c.leaves, l.Bytes())
	}
	for range echo.DefaultNumBuffers {
		var blocks [][]byte
		for _, l := range c.leaves {
			block := make([]byte, len(l)*w.BatchSize)
			for i := range block { // fault it in, as the ring is
				block[i] = 1
			}
			blocks = append(blocks, block)
		}
		c.slabs = append(c.slabs, blocks)
	}
	return c
}

func (c *copier) batch() {
	blocks := c.slabs[c.next]
	c.next = (c.next + 1) % len(c.slabs)
	for i := range c.batchSize {
		for j, l := range c.leaves {
			copy(blocks[j][i*len(l):], l)
		}
	}
}

var (
	ceilingMu sync.Mutex
	ceilings  = map[string]float64{}
)

// CopyCeiling measures, once per process and workload, the bytes per second
// of the copier: the ceiling of in-process paths.
func CopyCeiling(w Workload) float64 {
	ceilingMu.Lock()
	defer ceilingMu.Unlock()
	if v, ok := ceilings[w.Short]; ok {
		return v
	}
	c := newCopier(w)
	c.batch() // warm
	start := time.Now()
	n := 0
	for time.Since(start) < 300*time.Millisecond || n < 3 {
		c.batch()
		n++
	}
	v := float64(n*w.BatchSize*w.PayloadBytes) / time.Since(start).Seconds()
	ceilings[w.Short] = v
	return v
}

// reportRates adds samples/s and the ratio to the copy ceiling.
func reportRates(b *testing.B, w Workload, samples float64) {
	b.StopTimer()
	secs := b.Elapsed().Seconds()
	b.ReportMetric(samples/secs, "samples/s")
	b.ReportMetric(samples*float64(w.PayloadBytes)/secs/CopyCeiling(w), "x_copy")
}
