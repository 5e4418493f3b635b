//go:build cgo

package main

// The daemon scripts need a real custodyd on a SoftHSM token, and the
// token needs cgo (custody/hsm): this file is left out of a CGO_ENABLED=0
// test build, which custodyctl itself must stay buildable with.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"custody/hsm/hsmtest"
	"custody/internal/orders/vaulttest"
)

// hsmSetupErr is why SoftHSM could not be set up; the daemon scripts skip
// on it (fail with CUSTODY_REQUIRE_HSM=1).
var hsmSetupErr error

func init() {
	setupSteps = append(setupSteps, func() func() {
		cleanup, err := hsmtest.Setup()
		if err != nil {
			hsmSetupErr = err
			return func() {}
		}
		return cleanup
	})
}

// TestScriptDaemon runs testdata/daemon/*.txtar, each against its own
// custodyd (the real binary) on a fresh SoftHSM token, listening on a Unix
// socket in the script's $WORK and named by $CUSTODY_SOCKET, and checking
// court orders in the shared dev Vault (vaulttest.Shared) signed by
// judge-1 and judge-2 (quorum 2; their keys in $WORK/judge-N.key, the
// legal-intake token in $INTAKE, $VAULT_ADDR set). The policy gives the
// user running the tests the roles admin, application and auditor and
// lets it act as client-* and miner-* for settlement and dispute (the
// first-run policy's shape, plus investigation for audits). The daemon's
// access log is $WORK/.custodyd/log. Update expected output as for
// TestScript.
func TestScriptDaemon(t *testing.T) {
	if hsmSetupErr != nil {
		if os.Getenv("CUSTODY_REQUIRE_HSM") == "1" {
			t.Fatal(hsmSetupErr)
		}
		t.Skip(hsmSetupErr)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	custodyd := buildCustodyd(t)
	vs := vaulttest.Shared(t)
	testscript.Run(t, testscript.Params{
		Dir:           "testdata/daemon",
		UpdateScripts: *updateScripts,
		Cmds:          map[string]func(*testscript.TestScript, bool, []string){"exits": exits, "grab": grab, "eventually": eventually},
		Setup: func(e *testscript.Env) error {
			tok := hsmtest.NewToken(t)
			policy := fmt.Sprintf(`{"version":1,
 "purposes":[{"name":"settlement","fields":["amount","pricing"]},{"name":"dispute","fields":["*"]},{"name":"investigation","fields":["*"]}],
 "principals":[{"name":"operator","users":[%q],"roles":["admin","application","auditor"],
  "act_as":[{"participants":["client-*","miner-*"],"purposes":["settlement","dispute"]}],
  "seal_for":[{"participants":["client-*","miner-*"]}]}]}`, me.Username)
			var signers []map[string]string
			for _, name := range []string{"judge-1", "judge-2"} {
				var out, errb strings.Builder
				if run([]string{"order", "keygen", "--out", filepath.Join(e.WorkDir, name+".key"), "--name", name}, nil, &out, &errb) != 0 {
					return fmt.Errorf("order keygen: %s", errb.String())
				}
				var pin map[string]string
				if err := json.Unmarshal([]byte(out.String()), &pin); err != nil {
					return fmt.Errorf("order keygen printed %q: %v", out.String(), err)
				}
				signers = append(signers, pin)
			}
			e.Setenv("VAULT_ADDR", vs.Addr)
			e.Setenv("INTAKE", vaulttest.TokenFile(t, vs.Token(t, "legal-intake")))
			cfg, _ := json.Marshal(map[string]any{
				"vault": map[string]any{"address": vs.Addr, "token_file": vaulttest.TokenFile(t, vs.Token(t, "custodyd")),
					"signers": signers, "quorum": 2},
				"pkcs11":      map[string]any{"module": tok.ModulePath, "token_label": tok.TokenLabel, "pin_file": tok.PINFile},
				"socket":      map[string]any{"path": "custodyd.sock", "mode": "0600"},
				"policy_file": "policy.json",
				"metrics":     map[string]any{"listen": "unix:metrics.sock"},
				"access_log":  map[string]any{"dir": "log"},
				"ceremony":    map[string]any{"auto_genesis": true},
			})
			dir := filepath.Join(e.WorkDir, ".custodyd")
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, "policy.json"), []byte(policy), 0o600); err != nil {
				return err
			}
			config := filepath.Join(dir, "custodyd.json")
			if err := os.WriteFile(config, cfg, 0o600); err != nil {
				return err
			}
			socket := filepath.Join(dir, "custodyd.sock")
			e.Setenv("CUSTODY_SOCKET", socket)
			return startCustodyd(e, custodyd, config, socket)
		},
	})
}

// grab NAME REGEXP sets $NAME to the first group of REGEXP's first match
// in the previous command's stdout, for the commands that follow (an order
// body's SHA-256, which a signer must name).
func grab(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: grab NAME REGEXP")
	}
	re, err := regexp.Compile(args[1])
	if err != nil {
		ts.Fatalf("grab: %v", err)
	}
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 {
		ts.Fatalf("grab: no match for %s in stdout", args[1])
	}
	ts.Setenv(args[0], m[1])
}

// eventually PROGRAM [ARGS…] runs PROGRAM like exec until it succeeds, for
// up to 10 s: for what the daemon does on its own schedule (it signs a
// checkpoint every second). Its last stdout and stderr are kept.
func eventually(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: eventually PROGRAM [ARGS...]")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ts.Exec(args[0], args[1:]...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s did not succeed within 10s: %v", args[0], err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buildCustodyd builds the daemon binary into a temporary directory.
func buildCustodyd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "custodyd")
	if out, err := exec.Command("go", "build", "-o", bin, "custody/cmd/custodyd").CombinedOutput(); err != nil {
		t.Fatalf("building custodyd: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer is the daemon's stderr, read when it fails to start.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startCustodyd starts the daemon, stops it when the script ends, and
// returns once it accepts connections on socket.
func startCustodyd(e *testscript.Env, bin, config, socket string) error {
	var log lockedBuffer
	cmd := exec.Command(bin, "run", "--config", config)
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	e.Defer(func() {
		cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("custodyd exited: %v\n%s", err, log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("custodyd did not listen within 30s\n%s", log.String())
}
