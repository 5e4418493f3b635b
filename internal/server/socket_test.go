package server_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"custody/internal/server"
)

// TestSocketDirOthersCanWrite: a socket directory that a group or others
// can write (sticky or not, like /tmp), or that another user owns, is
// refused, and nothing is created in it.
func TestSocketDirOthersCanWrite(t *testing.T) {
	uid, _ := strconv.Atoi(users[appUser].Uid)
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		owner int
		want  string
	}{
		{"world-writable", 0o777, 0, "mode 0777"},
		{"sticky world-writable", 0o777 | os.ModeSticky, 0, "mode 0777"},
		{"group-writable", 0o775, 0, "mode 0775"},
		{"another user's", 0o755, uid, "owned by uid " + users[appUser].Uid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, tc.owner, -1); err != nil {
				t.Fatal(err)
			}
			ln, err := server.Listen(filepath.Join(dir, "custodyd.sock"), 0o660)
			if err == nil {
				ln.Close()
				t.Fatal("listened in a directory others can write")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if left, _ := os.ReadDir(dir); len(left) != 0 {
				t.Errorf("left in the directory: %v", left)
			}
		})
	}
}

// TestSocketSymlinkNotFollowed: a symlink at the socket path is refused
// and its target keeps its mode; one planted after the last check (as a
// racing writer of the directory would) is replaced by the socket, never
// followed: its target keeps its mode and the socket has exactly the
// configured one.
func TestSocketSymlinkNotFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "secret")
	if err := os.WriteFile(target, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "custodyd.sock")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if ln, err := server.Listen(path, 0o666); err == nil {
		ln.Close()
		t.Error("listened over a symlink")
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Errorf("symlink target chmodded to %04o", fi.Mode().Perm())
	}
	os.Remove(path)

	server.SetBeforeRename(func(p string) {
		if err := os.Symlink(target, p); err != nil {
			t.Error(err)
		}
	})
	defer server.SetBeforeRename(nil)
	ln, err := server.Listen(path, 0o666)
	if err != nil {
		t.Fatalf("listen with a racing symlink: %v", err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Errorf("racing symlink's target chmodded to %04o", fi.Mode().Perm())
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket path after listen: %v %v", fi, err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("close left the socket: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 {
		t.Errorf("left in the directory: %v", left)
	}
}
