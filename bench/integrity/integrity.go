// Package integrity proves that what actors send is what the learner gets:
// every acknowledged sample delivered exactly once, in its connection's
// order, with its bytes intact.
//
// An integrity sample is the tree
//
//	{"body": uint8[n], "stamp": uint64[3]}
//
// whose stamp holds the sending stream's id, the sample's sequence number in
// that stream, and a go-metro hash of the body seeded with both, so a flipped
// bit anywhere — body, id or sequence — shows. A stream is one connection:
// an actor that reconnects starts a new stream at sequence 0. The body is
// pseudo-random bytes derived from the stamp, so samples differ and a sample
// spliced from two others fails its hash.
//
// Actors stamp samples with Sample.Fill and tell a Checker what each stream
// sent and had acknowledged (Checker.Sent); the consumer passes every batch
// to Checker.Batch; Checker.Report compares the two.
package integrity

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"

	metro "github.com/dgryski/go-metro"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// StampBytes is the size of a sample's stamp leaf: stream id, sequence
// number, hash.
const StampBytes = 3 * 8

// Filler is the stream id of filler samples: samples submitted after every
// actor is done, to complete the last batch. The Checker checks their hash
// and otherwise only notes that one arrived.
const Filler = 0

// Stream ids and filler sequence numbers carry their checker's epoch, a
// random number, in their high 32 bits, so that a server reused from run
// to run cannot pass off one run's leftovers (samples committed after the
// run's last batch) as the next run's.

// Example returns an integrity sample tree with a body of n bytes, for
// building a server or dialling one.
func Example(n int) any {
	return NewSample(n).Tree
}

// Sample is one integrity sample's memory, reused from sample to sample.
type Sample struct {
	// Tree is the sample as a tree, for Server.Submit and Client.Send.
	Tree any
	// Payload is the sample as it crosses the wire: the body, then the
	// stamp (the leaves in flatten order).
	Payload []byte
	body    []byte
	stamp   []byte
}

// NewSample returns a sample with a body of n bytes, not yet stamped.
func NewSample(n int) *Sample {
	if n < 0 {
		panic(fmt.Sprintf("integrity: body of %d bytes", n))
	}
	p := make([]byte, n+StampBytes)
	s := &Sample{Payload: p, body: p[:n], stamp: p[n:]}
	body, err := pytree.NewArray(pytree.Uint8, []int{n}, s.body)
	if err != nil {
		panic(err) // the size is the shape's by construction
	}
	stamp, err := pytree.NewArray(pytree.Uint64, []int{3}, s.stamp)
	if err != nil {
		panic(err)
	}
	s.Tree = map[string]any{"body": body, "stamp": stamp}
	return s
}

// Fill stamps the sample as sequence number seq of stream and fills its
// body. It allocates nothing.
func (s *Sample) Fill(stream, seq uint64) {
	x := mix(seed(stream, seq)) | 1 // xorshift's state must not be 0
	b := s.body
	for len(b) >= 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b, x)
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(x >> (8 * i))
	}
	binary.LittleEndian.PutUint64(s.stamp[0:], stream)
	binary.LittleEndian.PutUint64(s.stamp[8:], seq)
	binary.LittleEndian.PutUint64(s.stamp[16:], metro.Hash64(s.body, seed(stream, seq)))
}

// seed mixes a stream id and a sequence number into a hash seed.
func seed(stream, seq uint64) uint64 {
	return stream*0x9e3779b97f4a7c15 ^ seq
}

// mix is splitmix64's finaliser: nearby seeds give unrelated states.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// Report is what a Checker found. Lost, Duplicated, Reordered, Corrupted
// and Phantom must all be 0.
type Report struct {
	Streams uint64 // streams (connections) that reported what they sent
	// Sent counts whole samples written to a connection; Acked those the
	// actor saw acknowledged before it stopped.
	Sent, Acked uint64
	// Delivered counts stamped samples handed out in batches, fillers
	// excluded.
	Delivered uint64
	// Lost counts acknowledged samples never delivered.
	Lost uint64
	// Duplicated counts samples delivered a second time.
	Duplicated uint64
	// Reordered counts samples delivered after a later one of their stream,
	// or after a gap in it.
	Reordered uint64
	// Corrupted counts samples of a reported stream whose hash does not
	// match their bytes, and samples with a matching hash of a stream no
	// actor reported.
	Corrupted uint64
	// Foreign counts samples that are not integrity samples at all: their
	// hash does not match and their stream id is none an actor reported.
	// They are what a hostile peer's bytes become: the protocol has no
	// framing to tell them apart, so the server delivers them as that
	// peer's samples. Only a run with hostile peers has any.
	Foreign uint64
	// Phantom counts samples delivered that their actor never wholly sent:
	// a partial sample committed, or bytes invented.
	Phantom uint64
	// Fillers counts filler samples delivered.
	Fillers uint64
	// Stale counts intact samples of an earlier checker's run, left in
	// the server's ring: not a fault of this run.
	Stale uint64
}

// OK reports whether nothing was lost, duplicated, reordered, corrupted or
// invented.
func (r Report) OK() bool {
	return r.Lost == 0 && r.Duplicated == 0 && r.Reordered == 0 && r.Corrupted == 0 && r.Phantom == 0
}

func (r Report) String() string {
	return fmt.Sprintf("streams %d, sent %d, acked %d, delivered %d, lost %d, duplicated %d, reordered %d, corrupted %d, phantom %d, foreign %d",
		r.Streams, r.Sent, r.Acked, r.Delivered, r.Lost, r.Duplicated, r.Reordered, r.Corrupted, r.Phantom, r.Foreign)
}

// stream is what the Checker knows of one stream.
type stream struct {
	next      uint64 // the sequence number expected next
	delivered uint64
	reported  bool
	sent      uint64
	acked     uint64
}

// Checker checks delivered batches against what actors report. Batch is for
// the consumer; Sent may be called from any goroutine.
type Checker struct {
	body, stamp int // leaf indices in flatten order
	n           int // body bytes
	epoch       uint64

	mu      sync.Mutex
	streams map[uint64]*stream
	bad     map[uint64]uint64 // samples whose hash failed, by the id they bear
	r       Report            // Duplicated, Reordered, Fillers so far
}

// NewChecker returns a Checker for integrity samples with an n-byte body.
func NewChecker(n int) *Checker {
	spec, err := pytree.SpecOf(Example(n))
	if err != nil {
		panic(err)
	}
	c := &Checker{
		n: n, body: -1, stamp: -1, epoch: uint64(1 + rand.Uint32N(math.MaxUint32)),
		streams: make(map[uint64]*stream), bad: make(map[uint64]uint64),
	}
	for i, l := range spec.Leaves() {
		switch l.Path {
		case "body":
			c.body = i
		case "stamp":
			c.stamp = i
		}
	}
	if c.body < 0 || c.stamp < 0 {
		panic(fmt.Sprintf("integrity: leaves %v", spec.Leaves()))
	}
	return c
}

// StreamID returns the id of this checker's stream number n.
func (c *Checker) StreamID(n uint32) uint64 { return c.epoch<<32 | uint64(n) }

// FillerSeq returns the sequence number of this checker's filler number i.
func (c *Checker) FillerSeq(i uint32) uint64 { return c.epoch<<32 | uint64(i) }

// Batch checks one batch, given as its leaves in flatten order (a
// Sample's Leaves). It returns the number of this checker's filler samples
// in it.
func (c *Checker) Batch(leaves []pytree.Array) (fillers int) {
	bodies, stamps := leaves[c.body].Bytes(), leaves[c.stamp].Bytes()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 0; i < len(stamps)/StampBytes; i++ {
		st := stamps[i*StampBytes:]
		id := binary.LittleEndian.Uint64(st)
		seq := binary.LittleEndian.Uint64(st[8:])
		sum := binary.LittleEndian.Uint64(st[16:])
		if metro.Hash64(bodies[i*c.n:(i+1)*c.n], seed(id, seq)) != sum {
			c.bad[id]++ // Corrupted or Foreign: Report knows which
			continue
		}
		if id == Filler {
			if seq>>32 == c.epoch {
				fillers++
				c.r.Fillers++
			} else {
				c.r.Stale++
			}
			continue
		}
		if id>>32 != c.epoch {
			c.r.Stale++
			continue
		}
		s := c.streams[id]
		if s == nil {
			s = &stream{}
			c.streams[id] = s
		}
		switch {
		case seq == s.next:
			s.next++
			s.delivered++
		case seq < s.next:
			c.r.Duplicated++
		default:
			c.r.Reordered++
			s.next = seq + 1
			s.delivered++
		}
	}
	return fillers
}

// Fillers counts this checker's fillers in a batch without checking
// anything else: for a consumer that only needs to know where a run ends.
func (c *Checker) Fillers(leaves []pytree.Array) (fillers int) {
	stamps := leaves[c.stamp].Bytes()
	for i := 0; i < len(stamps)/StampBytes; i++ {
		st := stamps[i*StampBytes:]
		if binary.LittleEndian.Uint64(st) == Filler && binary.LittleEndian.Uint64(st[8:])>>32 == c.epoch {
			fillers++
		}
	}
	return fillers
}

// Sent records that stream sent sent whole samples, numbered from 0, and
// saw acked of them acknowledged. Each stream reports once, when it ends.
func (c *Checker) Sent(id, sent, acked uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[id]
	if s == nil {
		s = &stream{}
		c.streams[id] = s
	}
	s.reported, s.sent, s.acked = true, sent, acked
}

// Report compares what was delivered with what was reported sent and
// acknowledged. Call it once every stream has reported and the batches
// holding its acknowledged samples have been checked.
func (c *Checker) Report() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.r
	for id, n := range c.bad {
		if s := c.streams[id]; (s != nil && s.reported) || id == Filler {
			r.Corrupted += n
		} else {
			r.Foreign += n
		}
	}
	for _, s := range c.streams {
		r.Delivered += s.delivered
		if !s.reported {
			// Nobody sent this stream: its samples are forged, or their
			// ids corrupted in a way the hash missed.
			r.Corrupted += s.delivered
			continue
		}
		r.Streams++
		r.Sent += s.sent
		r.Acked += s.acked
		if s.next < s.acked {
			r.Lost += s.acked - s.next
		}
		if s.next > s.sent {
			r.Phantom += s.next - s.sent
		}
	}
	return r
}
