package hsm

import (
	"os"
	"runtime"
	"testing"
)

func TestProcs(t *testing.T) {
	for _, c := range []struct{ base, sessions, want int }{
		{2, 2, 4},
		{1, 1, 2},
		{8, 0, 8},
		{0, 3, 4},  // a base under 1 counts as 1
		{4, -1, 4}, // no sessions, no extra Ps
	} {
		if got := Procs(c.base, c.sessions); got != c.want {
			t.Errorf("Procs(%d, %d) = %d, want %d", c.base, c.sessions, got, c.want)
		}
	}
}

func TestSetProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	if procs, fromEnv := SetProcs(5); procs != 3 || !fromEnv {
		t.Fatalf("with GOMAXPROCS=3 in the environment: SetProcs(5) = %d, %v; want 3, true", procs, fromEnv)
	}
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Fatalf("with GOMAXPROCS=3 in the environment: GOMAXPROCS became %d", got)
	}

	os.Unsetenv("GOMAXPROCS") // t.Setenv restores it afterwards
	runtime.GOMAXPROCS(2)
	if procs, fromEnv := SetProcs(2); procs != 4 || fromEnv {
		t.Fatalf("SetProcs(2) on 2 Ps = %d, %v; want 4, false", procs, fromEnv)
	}
	if got := runtime.GOMAXPROCS(0); got != 4 {
		t.Fatalf("after SetProcs(2) on 2 Ps: GOMAXPROCS %d, want 4", got)
	}
}
