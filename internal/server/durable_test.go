package server

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriteDurableFullDisk: on a full file system (a 64 KiB tmpfs) a
// ceremony output that does not fit is an error, and nothing is left at
// its path: no file with a SHA-256 of bytes never written.
func TestWriteDurableFullDisk(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting a tmpfs needs root (make test runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	small := filepath.Join(dir, "small.txt")
	if err := writeDurable(small, []byte("fits\n"), 0o600); err != nil {
		t.Fatalf("a small file: %v", err)
	}
	big := filepath.Join(dir, "manifest.json")
	err := writeDurable(big, make([]byte, 256<<10), 0o600)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writeDurable on a full disk: %v, want ENOSPC", err)
	}
	if _, err := os.Lstat(big); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after ENOSPC, %s: %v", big, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d entries left in the directory, want the small file only", len(entries))
	}
	if err := writeDurable(small, []byte("again\n"), 0o600); !errors.Is(err, os.ErrExist) {
		t.Fatalf("overwriting an output: %v, want ErrExist", err)
	}
}
