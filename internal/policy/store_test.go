package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func writePolicy(t *testing.T, path, js string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(js), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path+".tmp", mode); err != nil { // umask-proof
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

var (
	policyV1 = doc(stdPurposes, `{"name": "first", "users": ["root"], "roles": ["admin"]}`)
	policyV2 = doc(stdPurposes, `{"name": "second", "users": ["root"], "roles": ["application"]}`)
)

func TestLoadFileChecks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "p.json")

	writePolicy(t, path, policyV1, 0o640)
	if p, err := Load(path); err != nil || !strings.Contains(p.Summary(), "1 principals") {
		t.Fatalf("Load = %v", err)
	}
	for _, mode := range []os.FileMode{0o660, 0o646, 0o666} {
		writePolicy(t, path, policyV1, mode)
		if _, err := Load(path); !errors.Is(err, ErrUnsafeFile) {
			t.Errorf("mode %04o: err = %v; want ErrUnsafeFile", mode, err)
		}
	}
	if _, err := Load(dir); !errors.Is(err, ErrUnsafeFile) {
		t.Errorf("directory: err = %v; want ErrUnsafeFile", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: err = %v; want os.ErrNotExist", err)
	}
	writePolicy(t, path, `{"version": 1, "principals": [{"name": "x", "users": ["cpol-nosuchuser"], "roles": ["admin"]}]}`, 0o600)
	_, err := Load(path)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `principals[0].users[0]: unknown user "cpol-nosuchuser"`) {
		t.Errorf("bad policy: err = %v", err)
	}
	if os.Geteuid() == 0 {
		writePolicy(t, path, policyV1, 0o600)
		if err := os.Chown(path, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); !errors.Is(err, ErrUnsafeFile) || !strings.Contains(err.Error(), "owned by uid 4242") {
			t.Errorf("foreign owner: err = %v; want ErrUnsafeFile", err)
		}
	}
}

func TestStoreReload(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "p.json")
	if _, err := NewStore(path); err == nil {
		t.Fatal("NewStore on a missing file succeeded")
	}
	writePolicy(t, path, policyV1, 0o600)
	s, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	name := func() string {
		pr, err := s.Current().Identify(Caller{UID: 0, GID: 0})
		if err != nil {
			t.Fatal(err)
		}
		return pr.Name
	}
	if name() != "first" {
		t.Fatalf("principal = %s", name())
	}
	old := s.Current()

	// A bad file keeps the old policy and says why.
	writePolicy(t, path, strings.Replace(policyV2, `"application"`, `"aplication"`, 1), 0o600)
	err = s.Reload()
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `principals[0].roles[0]: unknown role "aplication"`) {
		t.Errorf("Reload(bad) = %v", err)
	}
	if s.Current() != old || name() != "first" {
		t.Error("a failed reload replaced the policy")
	}
	// So does an unsafe one.
	writePolicy(t, path, policyV2, 0o666)
	if err := s.Reload(); !errors.Is(err, ErrUnsafeFile) || s.Current() != old {
		t.Errorf("Reload(unsafe) = %v", err)
	}
	// A good one replaces it; old values stay usable.
	writePolicy(t, path, policyV2, 0o600)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if name() != "second" {
		t.Errorf("after reload principal = %s", name())
	}
	if err := s.Current().Authorize(Principal{Name: "first"}, PermHealth); !errors.Is(err, ErrDenied) {
		t.Errorf("principal removed by reload: err = %v; want ErrDenied", err)
	}
	if err := old.Authorize(Principal{Name: "first"}, PermParticipantsRegister); err != nil {
		t.Errorf("old policy value changed: %v", err)
	}
	if s.Path() != path {
		t.Errorf("Path() = %s", s.Path())
	}
}

// Readers running while the file flips between two policies and a bad file
// always see one complete policy (run with -race).
func TestStoreConcurrentReload(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "p.json")
	writePolicy(t, path, policyV1, 0o600)
	s, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				p := s.Current()
				pr, err := p.Identify(Caller{UID: 0, GID: 0})
				if err != nil {
					errs <- err
					return
				}
				// The roles decide consistently within one policy value.
				want := map[string]Permission{"first": PermParticipantsRegister, "second": PermEncrypt}[pr.Name]
				if err := p.Authorize(pr, want); err != nil {
					errs <- err
					return
				}
				reads.Add(1)
			}
		}()
	}
	contents := []string{policyV2, `{"version": 1, "principals": [}`, policyV1}
	reloadErrs := 0
	for i := 0; i < 60; i++ {
		writePolicy(t, path, contents[i%len(contents)], 0o600)
		if err := s.Reload(); err != nil {
			reloadErrs++
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if reloadErrs != 20 {
		t.Errorf("%d reloads failed; want 20", reloadErrs)
	}
	if reads.Load() == 0 {
		t.Error("no reads happened")
	}
}
