// Package hsmtest gives every package's tests a real SoftHSM2 token: Setup
// points SoftHSM at a private token directory on tmpfs for the test binary,
// and NewToken initializes a fresh token per test. Nothing here mocks the
// HSM.
//
// Use Main as the package's TestMain, with the package's own setup steps
// (building binaries, creating Unix users) as arguments:
//
//	func TestMain(m *testing.M) { hsmtest.Main(m) }
//	func TestMain(m *testing.M) { hsmtest.Main(m, buildBinaries) }
package hsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"custody/hsm"
)

// DefaultModule is where Debian's softhsm2 package installs the module.
const DefaultModule = "/usr/lib/softhsm/libsofthsm2.so"

// ModulePath returns $SOFTHSM2_MODULE, or DefaultModule when it is unset.
func ModulePath() string {
	if p := os.Getenv("SOFTHSM2_MODULE"); p != "" {
		return p
	}
	return DefaultModule
}

// Setup creates a temporary token directory under /dev/shm (tmpfs: token
// objects cost ~1.5 ms there instead of ~45 ms on ext4; falls back to the
// default temp dir if /dev/shm is absent), writes a softhsm2.conf there
// (file backend, log level ERROR) and sets SOFTHSM2_CONF for this process.
// It fails, asking to run `make deps`, if the SoftHSM module is not
// installed. cleanup restores SOFTHSM2_CONF and removes the directory; call it
// after every Token is closed. Setup must run before the module is first
// loaded in the process (TestMain), because SoftHSM reads its configuration
// at C_Initialize.
func Setup() (cleanup func(), err error) {
	mod := ModulePath()
	if _, err := os.Stat(mod); err != nil {
		return nil, fmt.Errorf("hsmtest: SoftHSM2 module %s not found (%v): run `make deps` (installs softhsm2) or set SOFTHSM2_MODULE", mod, err)
	}
	base := "/dev/shm"
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "softhsm-test-")
	if err != nil {
		return nil, fmt.Errorf("hsmtest: %w", err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("hsmtest: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("hsmtest: %w", err)
	}
	old, had := os.LookupEnv("SOFTHSM2_CONF")
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("hsmtest: %w", err)
	}
	return func() {
		if had {
			os.Setenv("SOFTHSM2_CONF", old)
		} else {
			os.Unsetenv("SOFTHSM2_CONF")
		}
		os.RemoveAll(dir)
	}, nil
}

// Step is a package's own test setup, run by Main after Setup: it returns
// the function that undoes it, or an error that fails the test binary.
type Step func() (cleanup func(), err error)

// Main is a whole TestMain: it calls Setup, then each step in order, runs
// the tests, runs the cleanups in reverse order, and exits with the tests'
// code. If Setup or a step fails, it prints the error, undoes what was set
// up and exits 1 without running the tests.
func Main(m *testing.M, steps ...Step) { os.Exit(Run(m, steps...)) }

// Run is Main without the exit, for a TestMain that decides something
// before Setup (a re-executed test binary, a check for root): it returns
// the exit code.
func Run(m *testing.M, steps ...Step) int {
	return run(m, append([]Step{Setup}, steps...))
}

// setupErr is why Setup failed under MainOptional; NewToken skips or fails
// on it.
var setupErr error

// MainOptional is Main for a package whose tests mostly do not need the
// device: if Setup fails, the tests run anyway, and NewToken skips each
// test that needs a token, or fails it when CUSTODY_REQUIRE_HSM=1 (so CI
// cannot pass by skipping).
func MainOptional(m *testing.M, steps ...Step) {
	optional := func() (func(), error) {
		cleanup, err := Setup()
		if err != nil {
			setupErr = err
			return func() {}, nil
		}
		return cleanup, nil
	}
	os.Exit(run(m, append([]Step{optional}, steps...)))
}

func run(m *testing.M, steps []Step) int {
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	for _, step := range steps {
		cleanup, err := step()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if cleanup != nil {
			cleanups = append(cleanups, cleanup)
		}
	}
	return m.Run()
}

var seq atomic.Uint64

// NewToken initializes a fresh token with a unique label through
// hsm.InitToken, with a random SO PIN that is discarded and a random user
// PIN in a file of mode 0400 under t.TempDir(), and returns the Config to
// open it (Sessions 0: automatic). It fails the test if SOFTHSM2_CONF is
// unset (Setup not called), and under MainOptional without SoftHSM skips it
// (fails it if CUSTODY_REQUIRE_HSM=1).
func NewToken(t testing.TB) hsm.Config {
	t.Helper()
	b := make([]byte, 12)
	rand.Read(b)
	return NewTokenWithSOPIN(t, []byte(hex.EncodeToString(b)))
}

// NewTokenWithSOPIN is NewToken with the caller's SO PIN (held in memory
// only, as custodyd token init does), for tests of the backup path.
func NewTokenWithSOPIN(t testing.TB, soPIN []byte) hsm.Config {
	t.Helper()
	if setupErr != nil {
		if os.Getenv("CUSTODY_REQUIRE_HSM") == "1" {
			t.Fatal(setupErr)
		}
		t.Skip(setupErr)
	}
	if os.Getenv("SOFTHSM2_CONF") == "" {
		t.Fatal("hsmtest: SOFTHSM2_CONF is unset: call hsmtest.Setup in TestMain")
	}
	user := writePIN(t, t.TempDir(), "user.pin")
	label := fmt.Sprintf("test-%d-%d", os.Getpid(), seq.Add(1))
	err := hsm.InitToken(context.Background(), ModulePath(), label, soPIN, user)
	if errors.Is(err, hsm.ErrExists) {
		t.Fatalf("hsmtest: token label %q already in use", label)
	}
	if err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	return hsm.Config{ModulePath: ModulePath(), TokenLabel: label, PINFile: user}
}

func writePIN(t testing.TB, dir, name string) string {
	t.Helper()
	b := make([]byte, 12)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(hex.EncodeToString(b)+"\n"), 0o400); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	return p
}

// TokenDir returns the directory that holds the SoftHSM token labelled
// label (a subdirectory of the Setup token store named by the token's
// UUID), so an outage test can take it away and put it back.
func TokenDir(t testing.TB, label string) string {
	t.Helper()
	base := filepath.Join(filepath.Dir(os.Getenv("SOFTHSM2_CONF")), "tokens")
	matches, _ := filepath.Glob(filepath.Join(base, "*", "token.object"))
	padded := []byte(fmt.Sprintf("%-32s", label)) // as SoftHSM stores CKA_LABEL of a token
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && bytes.Contains(b, padded) {
			return filepath.Dir(m)
		}
	}
	t.Fatalf("hsmtest: no token directory for %q under %s", label, base)
	return ""
}
