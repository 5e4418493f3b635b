package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/testutil"
)

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	cfg := hsmtest.NewToken(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pin, err := os.ReadFile(cfg.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(c *hsm.Config)
		want error
	}{
		{"pin 0644", func(c *hsm.Config) { c.PINFile = write("world.pin", string(pin), 0o644) }, hsm.ErrPINFile},
		{"pin 0440", func(c *hsm.Config) { c.PINFile = write("group.pin", string(pin), 0o440) }, hsm.ErrPINFile},
		{"pin missing", func(c *hsm.Config) { c.PINFile = filepath.Join(dir, "none") }, hsm.ErrPINFile},
		{"pin empty", func(c *hsm.Config) { c.PINFile = write("empty.pin", "\n", 0o400) }, hsm.ErrPINFile},
		{"pin too large", func(c *hsm.Config) { c.PINFile = write("large.pin", strings.Repeat("1", hsm.MaxPINFile+1), 0o400) }, hsm.ErrPINFile},
		{"pin directory", func(c *hsm.Config) { c.PINFile = dir }, hsm.ErrPINFile},
		{"wrong pin", func(c *hsm.Config) { c.PINFile = write("wrong.pin", "not-the-pin\n", 0o600) }, hsm.ErrLogin},
		{"unknown token", func(c *hsm.Config) { c.TokenLabel = "no-such-token" }, hsm.ErrNoToken},
		{"pin of another owner", func(c *hsm.Config) { // last: skips without root; right mode, but uid 4242 could rewrite it
			c.PINFile = write("foreign.pin", string(pin), 0o400)
			if err := os.Chown(c.PINFile, 4242, -1); err != nil {
				t.Skipf("chown needs root: %v", err) // the hsm tests run as root in CI
			}
		}, hsm.ErrPINFile},
	} {
		c := cfg
		tc.mod(&c)
		tok, err := hsm.Open(ctx, c, nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if tok != nil {
			tok.Close()
		}
	}
	// The PIN file in good order opens, with and without its trailing newline.
	c := cfg
	c.PINFile = write("nonl.pin", string(pin[:len(pin)-1]), 0o400)
	tok, err := hsm.Open(ctx, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tok.Ping(ctx); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Ping after Close: %v, want ErrUnavailable", err)
	}
}

func TestInitTokenExists(t *testing.T) {
	t.Parallel()
	cfg := hsmtest.NewToken(t)
	err := hsm.InitToken(testCtx(t), cfg.ModulePath, cfg.TokenLabel, []byte("so-pin-1234"), cfg.PINFile)
	if !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("InitToken on existing label: %v, want ErrExists", err)
	}
	if err := hsm.InitToken(testCtx(t), cfg.ModulePath, "fresh", []byte("123"), cfg.PINFile); !errors.Is(err, hsm.ErrInvalidRequest) {
		t.Fatalf("InitToken with a 3-byte SO PIN: %v, want ErrInvalidRequest", err)
	}
	p := filepath.Join(t.TempDir(), "user.pin")
	os.WriteFile(p, []byte("1234\n"), 0o644)
	if err := hsm.InitToken(testCtx(t), cfg.ModulePath, "fresh", []byte("so-pin-1234"), p); !errors.Is(err, hsm.ErrPINFile) {
		t.Fatalf("InitToken with a 0644 user PIN: %v, want ErrPINFile", err)
	}
}

// closeAllSessions drops every session of the process on the token, from a
// second pkcs11.Ctx, as a token reset or another library would.
func closeAllSessions(t testing.TB, cfg hsm.Config) {
	t.Helper()
	c := pkcs11.New(cfg.ModulePath)
	if err := c.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Error(err)
		return
	}
	defer c.Destroy()
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Error(err)
		return
	}
	for _, s := range slots {
		if ti, err := c.GetTokenInfo(s); err == nil && ti.Label == cfg.TokenLabel {
			if err := c.CloseAllSessions(s); err != nil {
				t.Error(err)
				return
			}
			return
		}
	}
	t.Errorf("token %q not found", cfg.TokenLabel)
}

func TestSessionLoss(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	ctx := testCtx(t)
	x := genKey(t, tok, "x", hsm.X25519, hsm.UsageDerive)
	s := genKey(t, tok, "s", hsm.P256, hsm.UsageSign)

	closeAllSessions(t, cfg)
	if got, err := tok.Open(ctx, seal(t, x, []byte("after loss"), nil).req); err != nil || string(got) != "after loss" {
		t.Fatalf("Open after loss = %q, %v", got, err)
	}
	if tok.Info().Rebuilds != 1 {
		t.Fatalf("Rebuilds = %d, want 1", tok.Info().Rebuilds)
	}
	closeAllSessions(t, cfg)
	if _, err := tok.Sign(ctx, s.Label, make([]byte, 32)); err != nil {
		t.Fatalf("Sign after loss: %v", err)
	}
	closeAllSessions(t, cfg)
	if err := tok.Ping(ctx); err != nil {
		t.Fatalf("Ping after loss: %v", err)
	}
	if got := tok.Info().Rebuilds; got != 3 {
		t.Fatalf("Rebuilds = %d, want 3", got)
	}
}

func TestSessionLossConcurrent(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "x", hsm.X25519, hsm.UsageDerive)
	const workers, perWorker = 8, 40
	reqs := make([][]hsm.OpenRequest, workers)
	for w := range reqs {
		for range perWorker {
			reqs[w] = append(reqs[w], seal(t, key, []byte("payload"), []byte("aad")).req)
		}
	}
	before := tok.Info().Rebuilds
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	start := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i, req := range reqs[w] {
				if w == 0 && i == perWorker/4 {
					// Take every session so no call is inside SoftHSM (it
					// crashes if sessions close under a running C_Decrypt),
					// drop them all, and let the 7 other workers, now
					// waiting in the pool, find them dead.
					release, err := hsm.HoldAllSessions(ctx, tok)
					if err != nil {
						t.Error(err)
						return
					}
					closeAllSessions(t, cfg)
					release()
				}
				if got, err := tok.Open(ctx, req); err != nil || string(got) != "payload" {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d Opens failed across the loss, first: %v", len(errs), errs[0])
	}
	if got := tok.Info().Rebuilds - before; got != 1 {
		t.Fatalf("Rebuilds went up by %d, want exactly 1", got)
	}
	if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
		t.Fatalf("SessionObjectCount = %d, %v", n, err)
	}
}

// TestTokenGoneAndBack finalizes the library under the Token (as a crash of
// another library in the process would), hides the token's directory so
// rebuilds fail, then restores it: calls fail with ErrUnavailable while it is
// gone and succeed again afterwards, without reopening. Not parallel: C_Finalize
// affects every token in the process.
func TestTokenGoneAndBack(t *testing.T) {
	tok, cfg := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "x", hsm.X25519, hsm.UsageDerive)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := tok.Ping(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ping with cancelled ctx: %v", err)
	}

	dir := tokenDir(t, cfg.TokenLabel)
	// Outside tokendir (SoftHSM loads every directory in it), same filesystem.
	hidden := filepath.Join(filepath.Dir(filepath.Dir(dir)), "hidden-"+filepath.Base(dir))
	if err := os.Rename(dir, hidden); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			os.Rename(hidden, dir)
		}
	}()
	c := pkcs11.New(cfg.ModulePath)
	if err := c.Finalize(); err != nil {
		t.Fatalf("C_Finalize: %v", err)
	}
	c.Destroy()

	if err := tok.Ping(ctx); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Ping with token gone: %v, want ErrUnavailable", err)
	}
	if _, err := tok.Open(ctx, seal(t, key, []byte("p"), nil).req); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Open with token gone: %v, want ErrUnavailable", err)
	}

	if err := os.Rename(hidden, dir); err != nil {
		t.Fatal(err)
	}
	restored = true
	// SoftHSM reads its token directory only in C_Initialize: finalize again so
	// the next rebuild re-initializes and finds the token.
	c = pkcs11.New(cfg.ModulePath)
	if err := c.Finalize(); err != nil {
		t.Fatalf("C_Finalize: %v", err)
	}
	c.Destroy()
	time.Sleep(250 * time.Millisecond) // let time pass: past the rebuild backoff (200ms), so the next call rebuilds
	if err := tok.Ping(ctx); err != nil {
		t.Fatalf("Ping after the token came back: %v", err)
	}
	if got, err := tok.Open(ctx, seal(t, key, []byte("back"), nil).req); err != nil || string(got) != "back" {
		t.Fatalf("Open after the token came back = %q, %v", got, err)
	}
}

// tokenDir finds the SoftHSM directory of the token labelled label.
func tokenDir(t *testing.T, label string) string {
	t.Helper()
	conf, err := os.ReadFile(os.Getenv("SOFTHSM2_CONF"))
	if err != nil {
		t.Fatal(err)
	}
	var tokens string
	for _, line := range strings.Split(string(conf), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == "directories.tokendir" {
			tokens = strings.TrimSpace(v)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(tokens, "*", "token.object"))
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err == nil && bytes.Contains(b, []byte(label+" ")) {
			return filepath.Dir(f)
		}
	}
	t.Fatalf("no token directory for %q", label)
	return ""
}

// TestRecycleFreesSessionObjects: with RecycleAfter set, the pool finalizes
// and re-initializes the module after that many session objects, and the
// token keeps working without the caller noticing.
func TestRecycleFreesSessionObjects(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	cfg.RecycleAfter = 30 // every 10 opens
	tok, err := hsm.Open(testCtx(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	key := genKey(t, tok, "recycle", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("payload"), []byte("aad"))
	for i := range 35 {
		pt, err := tok.Open(testCtx(t), s.req)
		if err != nil || string(pt) != "payload" {
			t.Fatalf("open %d: %q %v", i, pt, err)
		}
	}
	if got := tok.Info().Recycles; got != 3 {
		t.Errorf("recycles after 35 opens at 3 objects each, every 30: %d, want 3", got)
	}
	if n, err := tok.SessionObjectCount(testCtx(t)); err != nil || n != 0 {
		t.Errorf("session objects: %d %v", n, err)
	}
}

// TestTokenDirectoryRemovedAndRestored: when the token goes away (its
// SoftHSM directory is moved), Ping notices (SoftHSM keeps serving objects
// it already holds, but C_GetTokenInfo fails), the pool turns unavailable
// and calls fail fast with ErrUnavailable; once the directory is back the
// token serves again with no reopening.
func TestTokenDirectoryRemovedAndRestored(t *testing.T) {
	cfg := hsmtest.NewToken(t)
	tok, err := hsm.Open(testCtx(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	key := genKey(t, tok, "outage", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("payload"), []byte("aad"))
	dir := hsmtest.TokenDir(t, cfg.TokenLabel)
	// Out of the token store: SoftHSM loads every directory in it.
	away := filepath.Join(filepath.Dir(filepath.Dir(dir)), "away-"+filepath.Base(dir))

	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	if err := tok.Ping(testCtx(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("ping with the token away: %v", err)
	}
	for i := range 3 {
		start := time.Now()
		_, err := tok.Open(testCtx(t), s.req)
		if !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("open %d with the token away: %v, want ErrUnavailable", i, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("open %d took %v: not failing fast", i, d)
		}
	}
	// A key never looked up before is not "not found" but unavailable too.
	if _, err := tok.FindKey(testCtx(t), "outage"); !errors.Is(err, hsm.ErrUnavailable) {
		t.Errorf("find with the token away: %v", err)
	}

	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	var openErr error
	if !testutil.Poll(5*time.Second, func() bool {
		var pt []byte
		pt, openErr = tok.Open(testCtx(t), s.req)
		return openErr == nil && string(pt) == "payload"
	}) {
		t.Fatalf("token back, but opens still fail: %v", openErr)
	}
	if err := tok.Ping(testCtx(t)); err != nil {
		t.Errorf("ping after the token came back: %v", err)
	}
	if info := tok.Info(); info.Recycles < 1 {
		t.Errorf("recovery without a module re-initialization? %+v", info)
	}
}
