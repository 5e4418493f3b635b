// Package vaulttest runs real Vault dev servers for tests, through
// scripts/vault.sh (which builds and caches the binary: `make deps`).
//
// Shared starts one dev server per test binary on first use; the binary's
// TestMain calls Stop once the tests are done (and vault.sh stops the server
// anyway when the test binary dies). Private starts a server of the test's
// own, for tests that stop it. Both load the policies of policies/vault/
// under the names "custodyd" and "legal-intake". A dev server keeps
// everything in memory, listens on 127.0.0.1 only, and has a random root
// token that is written to a 0400 file and never logged.
package vaulttest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/testutil"
)

// Server is one running dev server.
type Server struct {
	Dir       string // vault.sh's state directory
	Addr      string // http://127.0.0.1:PORT
	RootToken string
	UnsealKey string
}

var shared testutil.Shared[*Server]

// Shared returns the test binary's dev server, starting it on first use.
// It fails tb with instructions when the Vault binary is not built.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	return shared.Get(tb, start)
}

// Stop stops the shared server if one was started. Call it from TestMain.
func Stop() { shared.Stop() }

// Private starts a dev server for tb alone, stopped at tb's cleanup.
func Private(tb testing.TB) *Server {
	tb.Helper()
	s, err := start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// RepoRoot is the directory of custody's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module custody\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("vaulttest: custody's go.mod not found above the working directory")
		}
		dir = parent
	}
}

func start() (*Server, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(root, "scripts", "vault.sh")
	if out, err := exec.Command(script, "path").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("vaulttest: no Vault binary: %s\nrun `make deps` (builds it once, ~15 min on a cold machine, then cached)", strings.TrimSpace(string(out)))
	}
	dir, err := os.MkdirTemp("", "custody-vault-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(script, "start", dir)
	cmd.Env = append(os.Environ(), "VAULT_SH_WATCH_PID="+strconv.Itoa(os.Getpid()))
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "vault.log"))
		os.RemoveAll(dir)
		return nil, fmt.Errorf("vaulttest: scripts/vault.sh start: %v: %s\n%s", err, out, log)
	}
	s := &Server{Dir: dir}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b))
	}
	s.Addr, s.RootToken, s.UnsealKey = read("addr"), read("root-token"), read("unseal-key")
	if s.Addr == "" || s.RootToken == "" || s.UnsealKey == "" {
		s.Stop()
		return nil, fmt.Errorf("vaulttest: vault.sh start left no addr, root-token or unseal-key in %s", dir)
	}
	c, err := s.client()
	if err != nil {
		s.Stop()
		return nil, err
	}
	for name, file := range map[string]string{"custodyd": "custodyd.hcl", "legal-intake": "legal-intake.hcl"} {
		hcl, err := os.ReadFile(filepath.Join(root, "policies", "vault", file))
		if err == nil {
			err = c.Sys().PutPolicy(name, string(hcl))
		}
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("vaulttest: loading policy %s: %v", name, err)
		}
	}
	return s, nil
}

// Stop stops the server; stopping twice is harmless.
func (s *Server) Stop() {
	root, err := RepoRoot()
	if err == nil {
		exec.Command(filepath.Join(root, "scripts", "vault.sh"), "stop", s.Dir).Run()
	}
	os.RemoveAll(s.Dir)
}

func (s *Server) client() (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(s.RootToken)
	return c, nil
}

// Root returns a client holding the root token.
func (s *Server) Root(tb testing.TB) *vault.Client {
	tb.Helper()
	c, err := s.client()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Client returns a client for the server holding token.
func (s *Server) Client(tb testing.TB, token string) *vault.Client {
	tb.Helper()
	c := s.Root(tb)
	c.SetToken(token)
	return c
}

// Token creates a token with the named policies plus Vault's "default"
// (as every real token has) and returns it.
func (s *Server) Token(tb testing.TB, policies ...string) string {
	tb.Helper()
	sec, err := s.Root(tb).Auth().Token().Create(&vault.TokenCreateRequest{Policies: policies, TTL: "1h"})
	if err != nil {
		tb.Fatal(err)
	}
	return sec.Auth.ClientToken
}

// TokenFile writes a token to a new 0400 file in tb's temporary directory.
func TokenFile(tb testing.TB, token string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "vault-token-"+Random(4))
	if err := os.WriteFile(p, []byte(token+"\n"), 0o400); err != nil {
		tb.Fatal(err)
	}
	return p
}

// Revoke revokes a token.
func (s *Server) Revoke(tb testing.TB, token string) {
	tb.Helper()
	if err := s.Root(tb).Auth().Token().RevokeTree(token); err != nil {
		tb.Fatal(err)
	}
}

// Seal seals the server (`vault operator seal`).
func (s *Server) Seal(tb testing.TB) {
	tb.Helper()
	if out, err := s.cli("operator", "seal"); err != nil {
		tb.Fatalf("vault operator seal: %v: %s", err, out)
	}
}

// Unseal unseals it with the dev server's unseal key.
func (s *Server) Unseal(tb testing.TB) {
	tb.Helper()
	c := s.Root(tb)
	st, err := c.Sys().Unseal(s.UnsealKey)
	if err != nil || st.Sealed {
		tb.Fatalf("unseal: %v (sealed=%v)", err, st != nil && st.Sealed)
	}
	// Unsealed is not yet serving: wait until the KV mount answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Logical().Read("secret/config")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("vault not serving 10s after unseal: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cli runs the vault binary against this server with the root token in its
// environment (never on its command line).
func (s *Server) cli(args ...string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin, err := exec.Command(filepath.Join(root, "scripts", "vault.sh"), "path").Output()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(strings.TrimSpace(string(bin)), args...)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+s.Addr, "VAULT_TOKEN="+s.RootToken)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Random returns n random bytes in hex, for ids unique to a test.
func Random(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
