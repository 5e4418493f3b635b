package testutil

import (
	"errors"
	"testing"
)

type fakeServer struct{ stops *int }

func (f fakeServer) Stop() { *f.stops++ }

func TestSharedStartsOnceStopsOnce(t *testing.T) {
	var s Shared[fakeServer]
	starts, stops := 0, 0
	start := func() (fakeServer, error) { starts++; return fakeServer{&stops}, nil }
	s.Get(t, start)
	s.Get(t, start)
	s.Stop()
	if starts != 1 || stops != 1 {
		t.Errorf("starts %d, stops %d; want 1 and 1", starts, stops)
	}
	var never Shared[fakeServer]
	never.Stop() // never started: nothing to stop, no panic
}

func TestSharedFailedStartFailsEveryCaller(t *testing.T) {
	var s Shared[fakeServer]
	calls := 0
	start := func() (fakeServer, error) { calls++; return fakeServer{}, errors.New("no binary") }
	for range 2 {
		ft := &fatalRecorder{TB: t}
		func() {
			defer func() { recover() }()
			s.Get(ft, start)
		}()
		if !ft.failed {
			t.Error("Get after a failed start did not fail its caller")
		}
	}
	if calls != 1 {
		t.Errorf("start called %d times; want once", calls)
	}
	s.Stop() // the failed start left nothing to stop
}

// fatalRecorder records Fatal instead of ending the test (it panics to
// leave Get, as Fatal's Goexit would).
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Fatal(...any) { f.failed = true; panic("fatal") }
func (f *fatalRecorder) Helper()      {}
