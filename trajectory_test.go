package echo_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

func mustZeros(t *testing.T, dt pytree.DType, shape ...int) pytree.Array {
	t.Helper()
	a, err := pytree.Zeros(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// trajectoryExample has a buffered timescale of 3 steps and a single-item
// one with a scalar leaf.
func trajectoryExample(t *testing.T) map[string]any {
	return map[string]any{
		"steps": map[string]any{
			"obs":    mustZeros(t, pytree.Float32, 3, 4),
			"reward": mustZeros(t, pytree.Float32, 3),
		},
		"episode": map[string]any{
			"return": mustZeros(t, pytree.Float64),
			"seed":   mustZeros(t, pytree.Int64, 2),
		},
	}
}

func TestTrajectoryBufferedAndSingle(t *testing.T) {
	acc, err := echo.NewTrajectoryAccumulator(trajectoryExample(t))
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		for k := range 3 {
			base := float32(10*round + k)
			err := acc.Add("steps", map[string]any{
				"obs":    pytree.MustOf([]float32{base, base + 0.25, base + 0.5, base + 0.75}),
				"reward": pytree.Scalar(-base),
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := acc.Add("steps", map[string]any{
			"obs": pytree.MustOf([]float32{0, 0, 0, 0}), "reward": pytree.Scalar(float32(0)),
		}); !errors.Is(err, echo.ErrTrajectoryFull) {
			t.Fatalf("fourth step of three: %v, want ErrTrajectoryFull", err)
		}
		if filled, capacity := acc.Len("steps"); filled != 3 || capacity != 3 {
			t.Fatalf("Len = %d, %d; want 3, 3", filled, capacity)
		}
		if acc.Full() {
			t.Fatal("Full with the episode timescale empty")
		}
		// Single item: replaced whole, and a second Add is refused.
		ep := map[string]any{"return": pytree.Scalar(float64(round) + 0.5), "seed": pytree.MustOf([]int64{int64(round), 7})}
		if err := acc.Add("episode", ep); err != nil {
			t.Fatal(err)
		}
		if err := acc.Add("episode", ep); !errors.Is(err, echo.ErrTrajectoryFull) {
			t.Fatalf("second single item: %v, want ErrTrajectoryFull", err)
		}
		if !acc.Full() {
			t.Fatal("not Full with every slot written")
		}
		tree := acc.Build()
		obs, _ := tree["steps"].(map[string]any)["obs"].(pytree.Array).Float32()
		rew, _ := tree["steps"].(map[string]any)["reward"].(pytree.Array).Float32()
		ret, _ := tree["episode"].(map[string]any)["return"].(pytree.Array).Float64()
		seed, _ := tree["episode"].(map[string]any)["seed"].(pytree.Array).Int64()
		var wantObs, wantRew []float32
		for k := range 3 {
			base := float32(10*round + k)
			wantObs = append(wantObs, base, base+0.25, base+0.5, base+0.75)
			wantRew = append(wantRew, -base)
		}
		if !slices.Equal(obs, wantObs) || !slices.Equal(rew, wantRew) {
			t.Fatalf("round %d: steps built as %v %v, want %v %v", round, obs, rew, wantObs, wantRew)
		}
		if ret[0] != float64(round)+0.5 || !slices.Equal(seed, []int64{int64(round), 7}) {
			t.Fatalf("round %d: episode built as %v %v", round, ret, seed)
		}
		if filled, _ := acc.Len("steps"); filled != 0 {
			t.Fatalf("Build left %d steps counted", filled)
		}
	}
}

func TestTrajectoryBuildMatchesExampleSpec(t *testing.T) {
	ex := trajectoryExample(t)
	acc, err := echo.NewTrajectoryAccumulator(ex)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := pytree.SpecOf(ex)
	got, err := pytree.SpecOf(acc.Build())
	if err != nil {
		t.Fatal(err)
	}
	if err := want.Compare(got); err != nil {
		t.Fatalf("built tree differs from the example: %v", err)
	}
}

func TestTrajectoryLeadingOneForms(t *testing.T) {
	acc, err := echo.NewTrajectoryAccumulator(map[string]any{
		"item":  map[string]any{"a": mustZeros(t, pytree.Int32, 1, 2), "b": mustZeros(t, pytree.Int32, 1)},
		"steps": map[string]any{"x": mustZeros(t, pytree.Int32, 2, 2)},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A [1, 2] item leaf takes [2] as well as [1, 2]; a buffered row of [2]
	// takes [1, 2] too.
	if err := acc.Add("item", map[string]any{"a": pytree.MustOf([]int32{1, 2}), "b": pytree.MustOf([]int32{3})}); err != nil {
		t.Fatal(err)
	}
	if err := acc.Add("steps", map[string]any{"x": pytree.MustOf([]int32{4, 5}, 1, 2)}); err != nil {
		t.Fatal(err)
	}
	if err := acc.Add("steps", map[string]any{"x": pytree.MustOf([]int32{6, 7})}); err != nil {
		t.Fatal(err)
	}
	tree := acc.Build()
	a, _ := tree["item"].(map[string]any)["a"].(pytree.Array).Int32()
	x, _ := tree["steps"].(map[string]any)["x"].(pytree.Array).Int32()
	if !slices.Equal(a, []int32{1, 2}) || !slices.Equal(x, []int32{4, 5, 6, 7}) {
		t.Fatalf("built %v %v", a, x)
	}
}

func TestTrajectoryRefusals(t *testing.T) {
	if _, err := echo.NewTrajectoryAccumulator(map[string]any{
		"bad": map[string]any{"a": mustZeros(t, pytree.Float32, 3, 2), "b": mustZeros(t, pytree.Float32, 4)},
	}); !errors.Is(err, echo.ErrBadExample) || !strings.Contains(err.Error(), "leading dimensions [3 4]") {
		t.Fatalf("leaves of different lengths: %v, want ErrBadExample naming them", err)
	}
	if _, err := echo.NewTrajectoryAccumulator(map[string]any{"empty": map[string]any{}}); !errors.Is(err, echo.ErrBadExample) {
		t.Fatalf("timescale with no leaves: %v, want ErrBadExample", err)
	}
	if _, err := echo.NewTrajectoryAccumulator(nil); !errors.Is(err, echo.ErrBadExample) {
		t.Fatalf("no timescales: %v, want ErrBadExample", err)
	}
	acc, err := echo.NewTrajectoryAccumulator(trajectoryExample(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := acc.Add("nope", nil); !errors.Is(err, echo.ErrUnknownTimescale) || !strings.Contains(err.Error(), "episode, steps") {
		t.Fatalf("unknown timescale: %v", err)
	}
	bad := map[string]any{"obs": pytree.MustOf([]float64{1, 2, 3, 4}), "reward": pytree.Scalar(float32(1))}
	if err := acc.Add("steps", bad); !errors.Is(err, echo.ErrSpecMismatch) {
		t.Fatalf("float64 step for float32 leaves: %v, want ErrSpecMismatch", err)
	}
	if filled, _ := acc.Len("steps"); filled != 0 {
		t.Fatal("a refused step was counted")
	}
}

// TestTrajectoryFeedsClient sends built trajectories through a Client, on
// every OS: each arrives as the bytes of the built tree.
func TestTrajectoryFeedsClient(t *testing.T) {
	ex := trajectoryExample(t)
	f := newFakeServer(t, ex, fakeOptions{})
	c := dialFake(t, f, ex)
	acc, err := echo.NewTrajectoryAccumulator(ex)
	if err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := range 2 {
		for k := range 3 {
			if err := acc.Add("steps", map[string]any{"obs": pytree.MustOf(make([]float32, 4)), "reward": pytree.Scalar(float32(i*3 + k))}); err != nil {
				t.Fatal(err)
			}
		}
		if err := acc.Add("episode", map[string]any{"return": pytree.Scalar(float64(i)), "seed": pytree.MustOf([]int64{int64(i), 7})}); err != nil {
			t.Fatal(err)
		}
		tree := acc.Build()
		leaves, _, err := pytree.Flatten(tree)
		if err != nil {
			t.Fatal(err)
		}
		var b []byte
		for _, a := range leaves {
			b = append(b, a.Bytes()...)
		}
		want = append(want, b)
		if err := c.Send(t.Context(), tree); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.expect(t, want...)
}
