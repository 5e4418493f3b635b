package safefile_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"custody/internal/safefile"
)

func TestChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	foreign := write("foreign", "x", 0o600)
	if os.Geteuid() == 0 {
		if err := os.Chown(foreign, 4242, -1); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(dir, "link")
	os.Symlink(write("linked", "x", 0o644), link)
	for _, tc := range []struct {
		name   string
		path   string
		secret bool
		want   error // nil = accepted
	}{
		{"plain 0644", write("a", "x", 0o644), false, nil},
		{"plain 0664", write("b", "x", 0o664), false, safefile.ErrUnsafe},
		{"plain 0646", write("c", "x", 0o646), false, safefile.ErrUnsafe},
		{"secret 0400", write("d", "x", 0o400), true, nil},
		{"secret 0600", write("e", "x", 0o600), true, nil},
		{"secret 0640", write("f", "x", 0o640), true, safefile.ErrUnsafe},
		{"secret 0604", write("g", "x", 0o604), true, safefile.ErrUnsafe},
		{"directory", dir, false, safefile.ErrUnsafe},
		{"fifo", fifo, true, safefile.ErrUnsafe},
		{"too large", write("big", "0123456789abcdefX", 0o600), true, safefile.ErrTooLarge},
		{"symlink to 0644, as a secret", link, true, safefile.ErrUnsafe},
		{"missing", filepath.Join(dir, "none"), false, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read := safefile.Read
			if tc.secret {
				read = safefile.ReadSecret
			}
			done := make(chan struct{})
			var data []byte
			var err error
			go func() { data, err = read(tc.path, 16); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("read blocked")
			}
			if tc.want == nil {
				if err != nil || !bytes.Equal(data, []byte("x")) {
					t.Errorf("got %q, %v; want x", data, err)
				}
				return
			}
			if !errors.Is(err, tc.want) || data != nil {
				t.Errorf("got %q, %v; want %v", data, err, tc.want)
			}
		})
	}
	if os.Geteuid() != 0 {
		t.Log("not root: the foreign-owner case is skipped")
		return
	}
	if _, err := safefile.Read(foreign, 16); !errors.Is(err, safefile.ErrUnsafe) {
		t.Errorf("file owned by uid 4242: %v", err)
	}
	if f, err := safefile.Open(foreign); err == nil {
		f.Close()
		t.Error("Open accepted a file owned by uid 4242")
	}
}
