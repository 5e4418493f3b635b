package durable

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// names lists the entries of dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// check asserts that path holds data with exactly mode.
func check(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("%s holds %q, want %q", path, got, data)
	}
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != mode {
		t.Fatalf("%s: mode %v, want a regular file of mode %v", path, st.Mode(), mode)
	}
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	// 0666 would lose bits to a usual umask: the mode is set exactly.
	if err := Create(p, []byte("one\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	check(t, p, []byte("one\n"), 0o666)
	if err := Replace(p, []byte("two\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	check(t, p, []byte("two\n"), 0o400)
	q := filepath.Join(dir, "g")
	if err := Replace(q, nil, 0o600); err != nil {
		t.Fatalf("Replace of a missing file: %v", err)
	}
	check(t, q, nil, 0o600)
	if got := names(t, dir); len(got) != 2 {
		t.Fatalf("directory holds %q, want f and g only", got)
	}
	if err := Create(filepath.Join(dir, "missing", "f"), nil, 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Create in a missing directory: %v, want ErrNotExist", err)
	}
}

// TestCreateRefuses: Create fails with ErrExist on anything at the path —
// a file, a directory, a symlink to a file, a dangling symlink — and
// changes none of them: a symlink is never followed.
func TestCreateRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling")
	target := filepath.Join(dir, "target")
	if err := os.Symlink(target, dangling); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, sub, link, dangling} {
		err := Create(p, []byte("new"), 0o600)
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("Create over %s: %v, want ErrExist", filepath.Base(p), err)
		}
		var pe *fs.PathError
		if !errors.As(err, &pe) || pe.Path != p {
			t.Errorf("Create over %s: %#v does not name the path", filepath.Base(p), err)
		}
	}
	check(t, file, []byte("old"), 0o600)
	for _, l := range []string{link, dangling} {
		if st, err := os.Lstat(l); err != nil || st.Mode()&fs.ModeSymlink == 0 {
			t.Errorf("%s is no longer a symlink: %v %v", l, st, err)
		}
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create followed the dangling symlink: %s: %v", target, err)
	}
	if got := names(t, dir); len(got) != 4 {
		t.Errorf("directory holds %q, want the four entries only (no temporary file)", got)
	}
}

// TestCreateConcurrent: of many concurrent Creates of one path exactly one
// succeeds, and the file holds its data: none replaced another's file.
func TestCreateConcurrent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = Create(p, fmt.Appendf(nil, "writer %d", i), 0o600) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both created %s", winner, i, p)
		case err == nil:
			winner = i
		case !errors.Is(err, fs.ErrExist):
			t.Fatalf("writer %d: %v, want ErrExist", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer created the file")
	}
	check(t, p, fmt.Appendf(nil, "writer %d", winner), 0o600)
	if got := names(t, dir); len(got) != 1 {
		t.Fatalf("directory holds %q, want f only", got)
	}
}

// TestFullDisk: on a full file system (a 64 KiB tmpfs) a write that does
// not fit fails with ENOSPC; Create leaves nothing at the path, Replace
// keeps the old content, and neither leaves a temporary file.
func TestFullDisk(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting a tmpfs needs root (make test runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	small := filepath.Join(dir, "small.txt")
	if err := Create(small, []byte("fits\n"), 0o600); err != nil {
		t.Fatalf("a small file: %v", err)
	}
	big := make([]byte, 256<<10)
	p := filepath.Join(dir, "manifest.json")
	if err := Create(p, big, 0o600); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Create on a full disk: %v, want ENOSPC", err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after ENOSPC, %s: %v", p, err)
	}
	if err := Replace(p, big, 0o600); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Replace of a missing file on a full disk: %v, want ENOSPC", err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after ENOSPC, %s: %v", p, err)
	}
	if err := Replace(small, big, 0o644); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Replace on a full disk: %v, want ENOSPC", err)
	}
	check(t, small, []byte("fits\n"), 0o600)
	if got := names(t, dir); len(got) != 1 {
		t.Fatalf("directory holds %q, want the small file only", got)
	}
	if err := Create(small, []byte("again\n"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over a file: %v, want ErrExist", err)
	}
	// The space the failed writes took is free again.
	if err := Replace(small, make([]byte, 16<<10), 0o600); err != nil {
		t.Fatalf("Replace after the failures: %v", err)
	}
}

// TestSyncDirError: a failed directory fsync is reported (wrapping the
// cause); Create then leaves nothing at the path. EINVAL (a file system
// that cannot sync directories) is not an error. No file system used in
// tests fails an fsync on demand, so the error is injected.
func TestSyncDirError(t *testing.T) {
	fail := syscall.EIO
	testHookSyncDir = func(*os.File) error { return &fs.PathError{Op: "sync", Path: "dir", Err: fail} }
	t.Cleanup(func() { testHookSyncDir = nil })
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := Create(p, []byte("x"), 0o600); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Create with a failing directory fsync: %v, want EIO", err)
	}
	if got := names(t, dir); len(got) != 0 {
		t.Fatalf("after a failed Create the directory holds %q", got)
	}
	if err := Replace(p, []byte("y"), 0o600); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Replace with a failing directory fsync: %v, want EIO", err)
	}
	if got := names(t, dir); len(got) != 1 {
		t.Fatalf("after Replace the directory holds %q, want f (renamed before the fsync)", got)
	}
	fail = syscall.EINVAL
	if err := Create(filepath.Join(dir, "g"), []byte("z"), 0o600); err != nil {
		t.Fatalf("Create where the directory cannot be synced (EINVAL): %v", err)
	}
	if err := Replace(p, []byte("w"), 0o600); err != nil {
		t.Fatalf("Replace where the directory cannot be synced (EINVAL): %v", err)
	}
}
