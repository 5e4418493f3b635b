package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
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
// The socket's directory is created (0755) if missing and refused if it
// is a group- or world-writable directory (sticky or not) or is owned by
// anyone but root or the daemon's uid: whoever may write it could replace
// the socket. A socket file left behind by a dead daemon is replaced; one
// that still answers is an error (another custodyd is serving). A
// non-socket file at path (a symlink included) is never touched.
//
// The mode is never set by following path: the socket is bound under a
// restrictive umask in a fresh private (0700) directory beside path,
// chmod-ed there where no one else can reach it, and renamed onto path
// (rename replaces a link planted at path, it never follows it). So the
// socket is never reachable with wider permissions than mode, not even
// briefly, and no other file's mode is ever changed. Close removes the
// socket if path still names it.
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	if err := checkStale(path); err != nil {
		return nil, err
	}
	priv, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	defer os.Remove(priv)
	tmp := filepath.Join(priv, "s")
	if len(tmp) > 107 {
		return nil, fmt.Errorf("socket directory %s: path too long to bind beside it (%d bytes, at most 107); use a shorter socket.path directory", dir, len(tmp))
	}
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, mode); err != nil { // tmp is in a 0700 directory of ours
		return fail(fmt.Errorf("chmod socket: %w", err))
	}
	var st unix.Stat_t
	if err := unix.Lstat(tmp, &st); err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	if err := checkStale(path); err != nil { // again, just before replacing it
		return fail(err)
	}
	if beforeRename != nil {
		beforeRename(path)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	return &socketListener{UnixListener: ln, path: path, dev: st.Dev, ino: st.Ino}, nil
}

// beforeRename, when set (tests only), runs in Listen between the last
// check of path and the rename onto it: a test plants a symlink there, as
// a racing writer of the directory would.
var beforeRename func(path string)

// checkSocketDir refuses a socket directory that others could write.
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("socket directory %s has mode %04o: others could replace the socket; use a directory only its owner can write (chmod go-w, and not /tmp)", dir, perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("socket directory %s is owned by uid %d: it must be owned by root or uid %d", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// checkStale accepts a missing path or a dead socket at path (it will be
// replaced) and refuses anything else.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another process is serving on %s; stop it or choose another socket.path", path)
	}
	return nil
}

// socketListener is Listen's listener: its address is the socket's path,
// and Close removes the socket file if path still names it (never what
// another process put there since).
type socketListener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
}

func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	var st unix.Stat_t
	if unix.Lstat(l.path, &st) == nil && st.Dev == l.dev && st.Ino == l.ino {
		os.Remove(l.path)
	}
	return err
}

type peerKey struct{}

// peer is the identity of the process at the other end of a connection,
// read once at accept with SO_PEERCRED.
type peer struct {
	auditlog.Caller
	ok bool // false when the credentials could not be read: every request is refused
}

// connContext attaches the peer's credentials to the connection's context
// (those connLimiter read at accept), and the connection's record of an
// accepted second factor (mfa.go).
func connContext(ctx context.Context, c net.Conn) context.Context {
	ctx = context.WithValue(ctx, connFactorKey{}, &connFactor{}) // mfa.go
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

// Peer is a caller's identity as the policy sees it: the uid, gid and pid
// that SO_PEERCRED gives for a connection to the socket.
type Peer struct {
	UID, GID uint32
	PID      int32
}

type injectedPeerKey struct{}

// WithPeer returns a copy of ctx in which p is the caller of a request that
// Handler serves outside Serve: a test's httptest.NewRequest(…).WithContext.
// It is never the identity of a request that came through the socket:
// there the connection's SO_PEERCRED credentials are always the caller's
// (an unreadable one included: it is refused, never replaced by p).
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, injectedPeerKey{}, p)
}

// Handler is the server's whole HTTP API (the routes, their limits,
// deadlines, authorization and recording), as Serve serves it. A request's
// caller is its connection's SO_PEERCRED identity when it came through
// Serve; otherwise the Peer that WithPeer put into its context; otherwise
// nobody (refused with unknown_caller). So handlers can be tested with
// net/http/httptest and an injected identity, and nothing a client sends
// on the socket can choose who it is.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, fromConn := ctx.Value(peerKey{}).(peer); !fromConn { // connContext always sets one
			if p, ok := ctx.Value(injectedPeerKey{}).(Peer); ok {
				r = r.WithContext(context.WithValue(ctx, peerKey{}, peer{Caller: auditlog.Caller{UID: p.UID, GID: p.GID, PID: p.PID}, ok: true}))
			}
		}
		s.handler.ServeHTTP(w, r)
	})
}

func peerFrom(ctx context.Context) (peer, error) {
	p, _ := ctx.Value(peerKey{}).(peer)
	if !p.ok {
		return p, errors.New("no peer credentials on this connection")
	}
	return p, nil
}
