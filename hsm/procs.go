package hsm

import (
	"os"
	"runtime"
)

// Procs is the GOMAXPROCS for a process that has base Ps (its default,
// runtime.GOMAXPROCS(0): one per CPU it may use) and drives a session pool
// of the given size: base + sessions.
//
// Every device call is a cgo call, and a goroutine in a cgo call keeps its
// P until the runtime's sysmon takes it back, which it does only when it
// wakes: every 20 µs under load, but up to 10 ms apart in a process that was
// quiet before. With one P per core and every session busy (a rewrap's
// shards), live requests then wait runnable with no P to run on, and so does
// the network readiness that would wake them. One more P per session keeps
// a P for Go code on every core while every session is in a device call;
// the OS, not Go, then shares the cores between the threads. Measured
// (docs/store.md, "Go's scheduler"): on two cores, a live decrypt's p99
// during a rewrap at a fixed 150 rows/s was 11–13 ms with 2 Ps and
// 5.0–5.6 ms with 4, the runtime's scheduling-latency p99.9 4–7 ms and
// 1.3–1.6 ms.
func Procs(base, sessions int) int {
	return max(base, 1) + max(sessions, 0)
}

// SetProcs sets GOMAXPROCS to Procs(runtime.GOMAXPROCS(0), sessions) for a
// process about to drive a pool of that many sessions (call it once), unless
// the GOMAXPROCS environment variable is set: that is the operator's
// choice. It returns the value in force and whether it came from the
// environment. Setting it ends the runtime's own updates of GOMAXPROCS to
// a changed CPU limit of the process's cgroup: a new limit takes a restart.
func SetProcs(sessions int) (procs int, fromEnv bool) {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0), true
	}
	runtime.GOMAXPROCS(Procs(runtime.GOMAXPROCS(0), sessions))
	return runtime.GOMAXPROCS(0), false
}
