// Package pgtest runs a real PostgreSQL server for tests: initdb into a
// temporary directory owned by the system user custody-t-pg (PostgreSQL
// refuses to run as root; the user is created when missing), listening only
// on a Unix socket in that private directory (no TCP), trust
// authentication for it. Debian's postgresql package provides the binaries
// (scripts/deps.sh test installs it).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"custody/internal/testutil"
)

// Server is one running PostgreSQL.
type Server struct {
	Dir      string // data directory and socket directory, mode 0700
	postgres string // the server binary
	as       *syscall.SysProcAttr
	cmd      *exec.Cmd
	n        int // databases made
	mu       sync.Mutex
}

var shared testutil.Shared[*Server]

// Shared returns the test binary's server, starting it on first use.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	return shared.Get(tb, start)
}

// Stop stops the shared server if one was started. Call it from TestMain.
func Stop() { shared.Stop() }

// Private starts a server for tb alone (one a test may stop), stopped at
// tb's cleanup.
func Private(tb testing.TB) *Server {
	tb.Helper()
	s, err := start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	return s
}

const dbUser = "custody"

// DSN is the connection string of database db.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("host=%s user=%s dbname=%s sslmode=disable", s.Dir, dbUser, db)
}

// NewDatabase creates an empty database and returns its DSN.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	s.mu.Lock()
	s.n++
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatal(err)
	}
	return s.DSN(name)
}

// Stop shuts the server down and removes its directory.
func (s *Server) Stop() {
	s.Halt()
	os.RemoveAll(s.Dir)
}

// Halt shuts the server down (fast shutdown: SIGINT, which ends every
// connection), keeping its data for Launch.
func (s *Server) Halt() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// Launch starts the server on its data directory and returns once it
// accepts connections.
func (s *Server) Launch() error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, "postgres.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.postgres, "-D", filepath.Join(s.Dir, "data"), "-k", s.Dir, "-c", "listen_addresses=", "-c", "max_connections=100")
	as := *s.as
	as.Pdeathsig = syscall.SIGKILL // never outlive the test binary
	cmd.SysProcAttr, cmd.Dir, cmd.Stdout, cmd.Stderr = &as, s.Dir, logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			c.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.Dir, "postgres.log"))
			s.Halt()
			return errors.Join(fmt.Errorf("pgtest: PostgreSQL did not answer within 30s: %w", err), errors.New(string(log)))
		}
		time.Sleep(50 * time.Millisecond) // polling until the server accepts connections
	}
}

// bin finds a PostgreSQL program in Debian's layout, newest major first.
func bin(name string) (string, error) {
	ms, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	sort.Slice(ms, func(i, j int) bool { return major(ms[i]) > major(ms[j]) })
	if len(ms) == 0 {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		return "", fmt.Errorf("pgtest: PostgreSQL's %s is not installed: run `make deps-test` (Debian package postgresql)", name)
	}
	return ms[0], nil
}

func major(p string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
	return n
}

func pgUser() (*user.User, error) {
	const name = "custody-t-pg"
	if u, err := user.Lookup(name); err == nil {
		return u, nil
	}
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgtest: useradd %s: %v: %s", name, err, out)
	}
	return user.Lookup(name)
}

func start() (*Server, error) {
	initdb, err := bin("initdb")
	if err != nil {
		return nil, err
	}
	postgres, err := bin("postgres")
	if err != nil {
		return nil, err
	}
	u, err := pgUser()
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "custody-pg-")
	if err != nil {
		return nil, err
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	as := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	data := filepath.Join(dir, "data")
	ini := exec.Command(initdb, "-D", data, "-U", dbUser, "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions")
	ini.SysProcAttr, ini.Dir = as, dir
	if out, err := ini.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	s := &Server{Dir: dir, postgres: postgres, as: as}
	if err := s.Launch(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}
