//go:build linux

package echo_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/loadgen"
)

// openFDs returns the process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	n := loadgen.OpenFDs()
	if n < 0 {
		t.Fatal("cannot read /proc/self/fd")
	}
	return n
}

// mappingAt returns the /proc/self/maps line of the mapping holding addr,
// or "".
func mappingAt(t testing.TB, addr uintptr) string {
	t.Helper()
	m, err := loadgen.MappingAt(addr)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// eventually polls cond for up to 5 s.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// TestCloseWithEverythingBlocked closes a server while Submit calls,
// producers and network clients all wait for a full ring, and closes a
// second server while its consumer waits in Sample. Every blocked call must
// return ErrClosed (or, for clients, ErrConnectionClosed), and once the
// consumer lets go of its last batch no goroutine, descriptor or mapping
// may be left.
func TestCloseWithEverythingBlocked(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	fds := openFDs(t)

	full, err := echo.NewServer(numbered(0, 0), 2, echo.WithNumBuffers(2), echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := full.Start(); err != nil {
		t.Fatal(err)
	}
	empty, err := echo.NewServer(numbered(0, 0), 2, echo.WithTCP("127.0.0.1:0"), echo.WithSharedSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	if err := empty.Start(); err != nil {
		t.Fatal(err)
	}
	// Take one batch, to learn where the ring lives, and fill the ring.
	for seq := range 2 {
		if err := full.Submit(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := full.Sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ring := uintptr(unsafe.Pointer(unsafe.SliceData(held.Leaves[0].Bytes())))
	if mappingAt(t, ring) == "" {
		t.Fatal("the batch's memory is in no mapping")
	}
	// The consumer holds one slab: two samples fill the other.
	for seq := range 2 {
		if err := full.Submit(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	expect := func(what string, err error, want error) {
		if !errors.Is(err, want) {
			errs <- fmt.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	for i := range 3 {
		wg.Go(func() { expect("Submit", full.Submit(t.Context(), numbered(2, i)), echo.ErrClosed) })
	}
	for i := range 3 {
		p, err := full.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer p.Close()
			for seq := 0; ; seq++ {
				if err := p.Send(t.Context(), numbered(3+i, seq)); err != nil {
					expect("Producer.Send", err, echo.ErrClosed)
					return
				}
			}
		})
	}
	for i := range 3 {
		c, err := echo.Dial(ctx, full.Addr().String(), numbered(0, 0), echo.WithMaxInflight(4))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			for seq := 0; ; seq++ {
				if err := c.Send(t.Context(), numbered(10+i, seq)); err != nil {
					expect("Client.Send", err, echo.ErrConnectionClosed)
					return
				}
			}
		})
	}
	wg.Go(func() {
		_, err := empty.Sample(context.Background())
		expect("Sample", err, echo.ErrClosed)
	})
	// A peer stuck in authentication, and one served but silent.
	stuck, _ := challenged(t, empty)
	silent, err := echo.Dial(ctx, empty.Addr().String(), numbered(0, 0), echo.WithClientSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(200 * time.Millisecond) // let every one of them block

	if err := full.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := empty.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("blocked calls still blocked 10 s after Close")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	expectRefused(t, stuck)
	stuck.Close()
	if err := silent.Send(t.Context(), numbered(0, 0)); !errors.Is(err, echo.ErrConnectionClosed) {
		// The first Send after the server left may still be written: the
		// second meets the reset or the closed reader.
		if err := silent.Wait(ctx); !errors.Is(err, echo.ErrConnectionClosed) {
			t.Errorf("silent client after Close: %v", err)
		}
	}
	silent.Close()

	// The consumer still holds its batch: the ring stays mapped until it
	// calls Sample again.
	if mappingAt(t, ring) == "" {
		t.Fatal("Close unmapped a batch the consumer holds")
	}
	if _, err := full.Sample(ctx); !errors.Is(err, echo.ErrClosed) {
		t.Fatalf("Sample after Close: %v", err)
	}
	if m := mappingAt(t, ring); m != "" {
		t.Errorf("the ring is still mapped after Close and Sample: %s", m)
	}
	if !eventually(func() bool { return openFDs(t) <= fds }) {
		t.Errorf("%d descriptors open after Close, %d before", openFDs(t), fds)
	}
}
