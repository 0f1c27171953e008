package echo_test

import (
	"context"
	"fmt"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// A learner and one producer goroutine, as in the README.
func Example() {
	example := map[string]any{
		"obs":    pytree.MustOf(make([]float32, 8)),
		"reward": pytree.Scalar(float32(0)),
		"done":   pytree.Scalar(uint8(0)),
	}
	srv, err := echo.NewServer(example, 256)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		prod, err := srv.NewProducer()
		if err != nil {
			return
		}
		defer prod.Close()
		obs := make([]float32, 8)
		for step := 0; ; step++ {
			obs[0] = float32(step)
			err := prod.Send(map[string]any{
				"obs":    pytree.MustOf(obs),
				"reward": pytree.Scalar(float32(1)),
				"done":   pytree.Scalar(uint8(0)),
			})
			if err != nil { // echo.ErrClosed after Close
				return
			}
		}
	}()

	ctx := context.Background()
	for range 2 {
		smp, err := srv.Sample(ctx)
		if err != nil {
			panic(err)
		}
		obs, _ := smp.Batch.(map[string]any)["obs"].(pytree.Array).Float32()
		fmt.Println(len(obs), obs[8], obs[255*8])
	}
	srv.Close()
	<-done
	// Output:
	// 2048 1 255
	// 2048 257 511
}

// A learner listening on loopback and an actor sending over TCP, as in the
// README (which listens on a fixed port; this one lets the kernel choose).
func ExampleDial() {
	example := map[string]any{
		"obs":    pytree.MustOf(make([]float32, 8)),
		"reward": pytree.Scalar(float32(0)),
		"done":   pytree.Scalar(uint8(0)),
	}
	srv, err := echo.NewServer(example, 256, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		panic(err)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		client, err := echo.Dial(context.Background(), srv.Addr().String(), example)
		if err != nil {
			return
		}
		defer client.Close()
		obs := make([]float32, 8)
		for step := 0; ; step++ {
			obs[0] = float32(step)
			err := client.Send(map[string]any{
				"obs":    pytree.MustOf(obs),
				"reward": pytree.Scalar(float32(1)),
				"done":   pytree.Scalar(uint8(0)),
			})
			if err != nil { // echo.ErrConnectionClosed once the learner is gone
				return
			}
		}
	}()

	ctx := context.Background()
	for range 2 {
		smp, err := srv.Sample(ctx)
		if err != nil {
			panic(err)
		}
		obs, _ := smp.Batch.(map[string]any)["obs"].(pytree.Array).Float32()
		fmt.Println(len(obs), obs[8], obs[255*8], smp.Info.ActiveConnections)
	}
	srv.Close()
	<-done
	// Output:
	// 2048 1 255 1
	// 2048 257 511 1
}
