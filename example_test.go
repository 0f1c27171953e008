//go:build linux

package echo_test

import (
	"context"
	"errors"
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
		ctx := context.Background() // or one that ends when the actor should stop waiting
		obs := make([]float32, 8)
		for step := 0; ; step++ {
			obs[0] = float32(step)
			err := prod.Send(ctx, map[string]any{
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
		obs, err := echo.View[float32](smp, "obs") // 256×8 floats, no copy
		if err != nil {
			panic(err)
		}
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
		ctx := context.Background()
		client, err := echo.Dial(ctx, srv.Addr().String(), example)
		if err != nil {
			return
		}
		defer client.Close()
		obs := make([]float32, 8)
		for step := 0; ; step++ {
			obs[0] = float32(step)
			err := client.Send(ctx, map[string]any{
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
		obs, err := echo.View[float32](smp, "obs")
		if err != nil {
			panic(err)
		}
		fmt.Println(len(obs), obs[8], obs[255*8], smp.Info.ActiveConnections)
	}
	srv.Close()
	<-done
	// Output:
	// 2048 1 255 1
	// 2048 257 511 1
}

// stepSample is the sample of the examples below: an observation and the
// step that produced it.
func stepSample(step int) map[string]any {
	return map[string]any{
		"obs":  pytree.MustOf([]float32{float32(step), 10 * float32(step)}),
		"step": pytree.Scalar(int32(step)),
	}
}

// A learner's loop over batches. The error that ends the loop comes out
// once: ErrClosed after Close is the normal end, anything else (ctx's
// error, say) is not. Only whole batches come out: the fifth sample, alone
// in its batch, is dropped at Close.
func ExampleServer_Batches() {
	srv, err := echo.NewServer(stepSample(0), 2)
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	ctx := context.Background()
	for step := range 5 {
		if err := srv.Submit(ctx, stepSample(step)); err != nil {
			panic(err)
		}
	}

	batches := 0
	for smp, err := range srv.Batches(ctx) {
		if err != nil {
			if !errors.Is(err, echo.ErrClosed) {
				panic(err) // ctx done, or another failure
			}
			fmt.Println("end:", err)
			break
		}
		steps, err := echo.View[int32](smp, "step")
		if err != nil {
			panic(err)
		}
		fmt.Println("steps", steps, "still stored", smp.Info.StoreSize)
		if batches++; batches == 2 {
			srv.Close() // the learner has what it wants; the loop ends
		}
	}
	// Output:
	// steps [0 1] still stored 3
	// steps [2 3] still stored 1
	// end: echo: server closed
}

// An actor goroutine in the learner's process with its own Producer.
// Samples from one producer reach batches in the order sent.
func ExampleServer_NewProducer() {
	srv, err := echo.NewServer(stepSample(0), 3)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	prod, err := srv.NewProducer()
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		defer prod.Close() // what was sent is still delivered
		for step := range 6 {
			if err := prod.Send(ctx, stepSample(step)); err != nil {
				done <- err // echo.ErrClosed once the server is closed
				return
			}
		}
		done <- nil
	}()

	for range 2 {
		smp, err := srv.Sample(ctx)
		if err != nil {
			panic(err)
		}
		obs, _ := echo.View[float32](smp, "obs")
		fmt.Println(obs)
	}
	fmt.Println("producer:", <-done)
	// Output:
	// [0 0 1 10 2 20]
	// [3 30 4 40 5 50]
	// producer: <nil>
}

// An actor that steps an environment assembles each trajectory with a
// TrajectoryAccumulator, then sends the built tree as one sample. "steps"
// is a buffered timescale (its leaves share the leading dimension 3, one
// row per Add); "episode" is a single item.
func ExampleTrajectoryAccumulator() {
	example := map[string]any{
		"steps": map[string]any{
			"obs":    pytree.MustOf(make([]float32, 3*2), 3, 2),
			"reward": pytree.MustOf(make([]float32, 3)),
		},
		"episode": map[string]any{"seed": pytree.Scalar(int64(0))},
	}
	acc, err := echo.NewTrajectoryAccumulator(example)
	if err != nil {
		panic(err)
	}
	srv, err := echo.NewServer(example, 1)
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	for t := range 3 {
		err := acc.Add("steps", map[string]any{
			"obs":    pytree.MustOf([]float32{float32(t), 10 * float32(t)}),
			"reward": pytree.Scalar(float32(t) / 2),
		})
		if err != nil {
			panic(err)
		}
	}
	if err := acc.Add("episode", map[string]any{"seed": pytree.Scalar(int64(42))}); err != nil {
		panic(err)
	}
	filled, capacity := acc.Len("steps")
	fmt.Println("steps", filled, "of", capacity, "full:", acc.Full())
	// Build's tree is the accumulator's own buffers: send it before the
	// next Add.
	ctx := context.Background()
	if err := srv.Submit(ctx, acc.Build()); err != nil {
		panic(err)
	}

	smp, err := srv.Sample(ctx)
	if err != nil {
		panic(err)
	}
	obs, _ := echo.View[float32](smp, "steps/obs")
	reward, _ := echo.View[float32](smp, "steps/reward")
	seed, _ := echo.View[int64](smp, "episode/seed")
	fmt.Println(obs, reward, seed)
	// Output:
	// steps 3 of 3 full: true
	// [0 0 1 10 2 20] [0 0.5 1] [42]
}

// An actor stepping several environments at once sends their samples with
// one SendBatch.
func ExampleClient_SendBatch() {
	srv, err := echo.NewServer(stepSample(0), 4, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		panic(err)
	}

	ctx := context.Background()
	client, err := echo.Dial(ctx, srv.Addr().String(), stepSample(0))
	if err != nil {
		panic(err)
	}
	defer client.Close()
	envs := make([]any, 4)
	for i := range envs {
		envs[i] = stepSample(10 + i)
	}
	if err := client.SendBatch(ctx, envs); err != nil {
		panic(err)
	}

	smp, err := srv.Sample(ctx)
	if err != nil {
		panic(err)
	}
	steps, _ := echo.View[int32](smp, "step")
	fmt.Println(steps)
	// Every sample of the batch is in the server: the acks come back.
	if err := client.Wait(ctx); err != nil {
		panic(err)
	}
	fmt.Println("in flight:", client.Inflight())
	// Output:
	// [10 11 12 13]
	// in flight: 0
}

// Reading leaves of a batch by their paths: dict keys and list or tuple
// indices joined by "/", as in the server's Spec.
func ExampleView() {
	example := map[string]any{
		"obs":    map[string]any{"pos": pytree.MustOf(make([]float32, 2)), "vel": pytree.MustOf(make([]float32, 2))},
		"action": pytree.Scalar(int32(0)),
	}
	srv, err := echo.NewServer(example, 2)
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	ctx := context.Background()
	for i := range 2 {
		err := srv.Submit(ctx, map[string]any{
			"obs": map[string]any{
				"pos": pytree.MustOf([]float32{float32(i), 0}),
				"vel": pytree.MustOf([]float32{0.5, float32(i)}),
			},
			"action": pytree.Scalar(int32(7 + i)),
		})
		if err != nil {
			panic(err)
		}
	}
	smp, err := srv.Sample(ctx)
	if err != nil {
		panic(err)
	}
	var paths []string
	for _, l := range srv.Spec().Leaves() {
		paths = append(paths, l.Path)
	}
	fmt.Println(paths)

	vel, err := echo.View[float32](smp, "obs/vel") // a []float32 over the batch
	fmt.Println(vel, err)
	action, err := smp.Leaf("action") // the pytree.Array
	fmt.Println(action, err)

	_, err = echo.View[float32](smp, "obs/acc")
	fmt.Println(errors.Is(err, echo.ErrUnknownLeaf), err)
	_, err = echo.View[float32](smp, "action")
	fmt.Println(errors.Is(err, pytree.ErrDType), err)
	// Output:
	// [action obs/pos obs/vel]
	// [0.5 0 0.5 1] <nil>
	// int32[2] <nil>
	// true echo: unknown leaf: "obs/acc" (known: "action", "obs/pos", "obs/vel")
	// true echo: leaf "action": pytree: bad dtype: int32[2] viewed as float32
}
