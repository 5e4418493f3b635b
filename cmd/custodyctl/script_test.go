package main

import (
	"errors"
	"flag"
	"os/exec"
	"strconv"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"custody/internal/orders/vaulttest"
)

var updateScripts = flag.Bool("update", false, "rewrite the expected output in testdata/script/*.txtar from what custodyctl prints now")

// setupSteps run before the tests of the test process (not of the
// custodyctl it re-executes as); each returns its cleanup. The SoftHSM
// setup of the daemon scripts (script_daemon_test.go, cgo only) adds one.
var setupSteps []func() (cleanup func())

// testProcess runs setupSteps, the tests, the cleanups, and stops the
// shared dev Vault (vaulttest.Shared), before testscript.Main exits.
type testProcess struct{ *testing.M }

func (m testProcess) Run() int {
	for _, step := range setupSteps {
		defer step()()
	}
	defer vaulttest.Stop()
	return m.M.Run()
}

// TestMain lets the scripts run custodyctl as a command: testscript runs
// the test binary itself under that name, which calls main.
func TestMain(m *testing.M) {
	testscript.Main(testProcess{m}, map[string]func(){"custodyctl": main})
}

// TestScript runs testdata/script/*.txtar: each runs custodyctl and
// compares what it prints with the expected output kept in the script.
// After a deliberate change of what custodyctl prints, run
// `go test ./cmd/custodyctl -run TestScript -update` and review the diff.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:           "testdata/script",
		UpdateScripts: *updateScripts,
		Cmds:          map[string]func(*testscript.TestScript, bool, []string){"exits": exits},
		Setup: func(e *testscript.Env) error {
			// No daemon unless a script starts one: a socket path that
			// does not exist, and no Vault.
			e.Setenv("CUSTODY_SOCKET", e.WorkDir+"/no-daemon.sock")
			e.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
			e.Setenv("HOME", e.WorkDir)
			return nil
		},
	})
}

// exits N PROGRAM [ARGS…] runs PROGRAM like exec and fails unless its exit
// status is N (exec only tells zero from non-zero). stdout and stderr are
// kept for the commands that follow.
func exits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits N PROGRAM [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: %v", err)
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exits: %v", err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s: exit status %d, want %d", args[1], got, want)
	}
}
