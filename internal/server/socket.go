package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"custody/internal/auditlog"
)

// Listen opens the Unix socket at path with exactly the given mode.
//
// A socket file left behind by a dead daemon is removed; one that still
// answers is an error (another custodyd is serving). A non-socket file at
// path is never removed. The socket is created under a restrictive umask
// and then chmod-ed, so it is never reachable with wider permissions than
// mode, not even briefly.
func Listen(path string, mode os.FileMode) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to remove it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another process is serving on %s; stop it or choose another socket.path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, nil
}

type peerKey struct{}

// peer is the identity of the process at the other end of a connection,
// read once at accept with SO_PEERCRED.
type peer struct {
	auditlog.Caller
	ok bool // false when the credentials could not be read: every request is refused
}

// connContext attaches the peer's credentials to the connection's context:
// those connLimiter read at accept.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peerConn); ok {
		return context.WithValue(ctx, peerKey{}, pc.peer)
	}
	return context.WithValue(ctx, peerKey{}, peerOf(c))
}

// key is the uid the limits count p under: its uid, or noUID without
// credentials.
func (p peer) key() uint32 {
	if !p.ok {
		return noUID
	}
	return p.UID
}

func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return peer{}
	}
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(int(cred.Pid)) + "/exe")
	return peer{Caller: auditlog.Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Executable: exe}, ok: true}
}

func peerFrom(ctx context.Context) (peer, error) {
	p, _ := ctx.Value(peerKey{}).(peer)
	if !p.ok {
		return p, errors.New("no peer credentials on this connection")
	}
	return p, nil
}
