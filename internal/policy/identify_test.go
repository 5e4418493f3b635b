package policy

import (
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Users and groups every Debian system has, with their fixed ids.
const (
	uidRoot, uidDaemon, uidBin, uidNobody = 0, 1, 2, 65534
	gidRoot, gidDaemon, gidBin, gidSys    = 0, 1, 2, 3
	gidAdm, gidUsers, gidNogroup          = 4, 100, 65534
)

// requireDebianIDs skips the test unless the base accounts have the ids the
// tests assume.
func requireDebianIDs(t *testing.T) {
	t.Helper()
	for name, want := range map[string]string{"root": "0", "daemon": "1", "bin": "2", "nobody": "65534"} {
		if u, err := user.Lookup(name); err != nil || u.Uid != want {
			t.Skipf("user %s is not uid %s here", name, want)
		}
	}
	for name, want := range map[string]string{"root": "0", "daemon": "1", "bin": "2", "sys": "3", "adm": "4", "users": "100", "nogroup": "65534"} {
		if g, err := user.LookupGroup(name); err != nil || g.Gid != want {
			t.Skipf("group %s is not gid %s here", name, want)
		}
	}
}

// fakeGroups writes a group file with the real names and gids of the base
// groups and the given member lists, and returns a resolver reading it.
func fakeGroups(t *testing.T, members map[string]string) resolver {
	t.Helper()
	requireDebianIDs(t)
	var b strings.Builder
	b.WriteString("# test group file\n")
	for _, g := range []struct {
		name string
		gid  int
	}{{"root", 0}, {"daemon", 1}, {"bin", 2}, {"sys", 3}, {"adm", 4}, {"users", 100}, {"nogroup", 65534}} {
		b.WriteString(g.name + ":x:" + strconv.Itoa(g.gid) + ":" + members[g.name] + "\n")
	}
	path := filepath.Join(t.TempDir(), "group")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return resolver{groupFile: path}
}

func (r resolver) mustParse(t *testing.T, js string) *Policy {
	t.Helper()
	p, err := r.parse([]byte(js))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

func TestIdentify(t *testing.T) {
	t.Parallel()
	// daemon is listed as a member of adm; ghost is a stale name and is skipped.
	r := fakeGroups(t, map[string]string{"adm": "daemon,cpol-ghost", "sys": "bin"})
	p := r.mustParse(t, doc(stdPurposes, `
		{"name": "ops", "users": ["root"], "roles": ["admin"]},
		{"name": "apps", "groups": ["adm"], "roles": ["application", "reviewer"]},
		{"name": "binsys", "users": ["bin"], "groups": ["sys"], "roles": ["officer"]}`))

	tests := []struct {
		name   string
		caller Caller
		want   string // principal, or "" for ErrUnknownCaller
	}{
		{"user", Caller{UID: uidRoot, GID: gidRoot}, "ops"},
		{"user beats group", Caller{UID: uidRoot, GID: gidAdm}, "ops"},
		{"user named and member: user wins", Caller{UID: uidBin, GID: gidSys}, "binsys"},
		{"primary gid", Caller{UID: uidNobody, GID: gidAdm}, "apps"},
		{"supplementary member", Caller{UID: uidDaemon, GID: gidDaemon}, "apps"},
		{"supplementary member, other gid", Caller{UID: uidDaemon, GID: gidNogroup}, "apps"},
		{"unknown uid and gid", Caller{UID: uidNobody, GID: gidNogroup}, ""},
		{"unknown uid 4242", Caller{UID: 4242, GID: 4242}, ""},
		{"gid of a user-only principal's user does not count", Caller{UID: uidNobody, GID: gidRoot}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, err := p.Identify(tt.caller)
			if tt.want == "" {
				if !errors.Is(err, ErrUnknownCaller) {
					t.Fatalf("Identify(%+v) = %+v, %v; want ErrUnknownCaller", tt.caller, pr, err)
				}
				return
			}
			if err != nil || pr.Name != tt.want {
				t.Fatalf("Identify(%+v) = %+v, %v; want %s", tt.caller, pr, err, tt.want)
			}
		})
	}
	pr, _ := p.Identify(Caller{UID: uidDaemon, GID: gidDaemon})
	if got := strings.Join(pr.Roles, ","); got != "application,reviewer" {
		t.Errorf("roles = %s", got)
	}
	pr.Roles[0] = "admin" // the caller's copy; the policy must not change
	if pr2, _ := p.Identify(Caller{UID: uidDaemon, GID: gidDaemon}); pr2.Roles[0] != "application" {
		t.Error("Identify shares its Roles slice with the policy")
	}
}

func TestIdentifyAmbiguity(t *testing.T) {
	t.Parallel()
	// Two principals' groups cover daemon: through membership of adm and
	// through daemon's primary gid.
	r := fakeGroups(t, map[string]string{"adm": "daemon", "users": "daemon,bin"})
	_, err := r.parse([]byte(doc(stdPurposes, `
		{"name": "a", "groups": ["adm"], "roles": ["application"]},
		{"name": "b", "groups": ["daemon"], "roles": ["admin"]}`)))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(),
		`principals[1].groups[0]: user "daemon" (uid 1) is covered both by principal "a" (group "adm") and by principal "b" (group "daemon")`) {
		t.Errorf("primary-gid ambiguity: err = %v", err)
	}
	// Two memberships.
	_, err = r.parse([]byte(doc(stdPurposes, `
		{"name": "a", "groups": ["adm"], "roles": ["application"]},
		{"name": "b", "groups": ["users"], "roles": ["admin"]}`)))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `principals[1].groups[0]: user "daemon" (uid 1) is covered both`) {
		t.Errorf("membership ambiguity: err = %v", err)
	}
	// Naming the user decides it.
	p := r.mustParse(t, doc(stdPurposes, `
		{"name": "a", "groups": ["adm"], "roles": ["application"]},
		{"name": "b", "users": ["daemon"], "groups": ["users"], "roles": ["admin"]}`))
	if pr, err := p.Identify(Caller{UID: uidDaemon, GID: gidAdm}); err != nil || pr.Name != "b" {
		t.Errorf("Identify(daemon) = %+v, %v; want b", pr, err)
	}
	if pr, err := p.Identify(Caller{UID: uidBin, GID: gidBin}); err != nil || pr.Name != "b" {
		t.Errorf("Identify(bin) = %+v, %v; want b (member of users)", pr, err)
	}
	// Left to run time: a process whose gid is not its user's primary gid.
	p = r.mustParse(t, doc(stdPurposes, `
		{"name": "a", "groups": ["adm"], "roles": ["application"]},
		{"name": "b", "groups": ["sys"], "roles": ["admin"]}`))
	if pr, err := p.Identify(Caller{UID: uidDaemon, GID: gidSys}); !errors.Is(err, ErrUnknownCaller) || !strings.Contains(err.Error(), `"b" and "a"`) {
		t.Errorf("Identify(daemon with gid sys) = %+v, %v; want ambiguous ErrUnknownCaller", pr, err)
	}
	if pr, err := p.Identify(Caller{UID: uidDaemon, GID: gidDaemon}); err != nil || pr.Name != "a" {
		t.Errorf("Identify(daemon) = %+v, %v; want a", pr, err)
	}
}

func TestGroupFileProblems(t *testing.T) {
	t.Parallel()
	requireDebianIDs(t)
	js := doc(stdPurposes, `{"name": "a", "groups": ["adm"], "roles": ["admin"]}`)
	dir := t.TempDir()
	write := func(name, text string) resolver {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return resolver{groupFile: path}
	}
	for _, tt := range []struct {
		name string
		r    resolver
		want string
	}{
		{"missing", resolver{groupFile: filepath.Join(dir, "none")}, `principals[0].groups[0]: reading members of group "adm"`},
		{"malformed", write("bad", "root:x:0:\nadm:x:4\n"), "line 2: 3 fields, want 4"},
		{"gid mismatch", write("mismatch", "adm:x:99:daemon\n"), `group "adm" has gid 4 in the user database but 99 in`},
	} {
		_, err := tt.r.parse([]byte(js))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v; want %q", tt.name, err, tt.want)
		}
	}
	// A group the user database knows but the file does not matches by gid only.
	p := write("absent", "root:x:0:\n").mustParse(t, js)
	if pr, err := p.Identify(Caller{UID: uidNobody, GID: gidAdm}); err != nil || pr.Name != "a" {
		t.Errorf("Identify by gid = %+v, %v", pr, err)
	}
	if _, err := p.Identify(Caller{UID: uidDaemon, GID: gidDaemon}); !errors.Is(err, ErrUnknownCaller) {
		t.Errorf("Identify(daemon) err = %v; want ErrUnknownCaller", err)
	}
}

// TestIdentifyRealAccounts creates a group and a user with useradd and
// groupadd (root only) and resolves them through the real /etc/group.
func TestIdentifyRealAccounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create users")
	}
	for _, tool := range []string{"useradd", "userdel", "groupadd", "groupdel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found", tool)
		}
	}
	suffix := strconv.Itoa(os.Getpid())
	group, member, other := "cpolg"+suffix, "cpolm"+suffix, "cpolo"+suffix
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("groupadd", group)
	t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	run("useradd", "-M", "-N", "-g", "users", "-G", group, "-s", "/usr/sbin/nologin", member)
	t.Cleanup(func() { exec.Command("userdel", member).Run() })
	run("useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", other)
	t.Cleanup(func() { exec.Command("userdel", other).Run() })

	p := mustParse(t, doc(stdPurposes, `{"name": "apps", "groups": ["`+group+`"], "roles": ["application"]}`))
	ids := func(name string) (uint32, uint32) {
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		return uint32(uid), uint32(gid)
	}
	uid, gid := ids(member)
	if pr, err := p.Identify(Caller{UID: uid, GID: gid}); err != nil || pr.Name != "apps" {
		t.Errorf("supplementary member %s: Identify = %+v, %v", member, pr, err)
	}
	uid, gid = ids(other)
	if pr, err := p.Identify(Caller{UID: uid, GID: gid}); err != nil || pr.Name != "apps" {
		t.Errorf("primary-group user %s: Identify = %+v, %v", other, pr, err)
	}
	if _, err := p.Identify(Caller{UID: uid, GID: gidUsers}); !errors.Is(err, ErrUnknownCaller) {
		t.Errorf("%s with another gid and no membership: err = %v; want ErrUnknownCaller", other, err)
	}
	// Resolution happened at parse time: deleting the user changes nothing
	// until the next parse.
	run("userdel", member)
	uid, gid = ids(other)
	if pr, err := p.Identify(Caller{UID: uid, GID: gid}); err != nil || pr.Name != "apps" {
		t.Errorf("after userdel: Identify = %+v, %v", pr, err)
	}
	if _, err := Parse([]byte(doc(stdPurposes, `{"name": "apps", "users": ["`+member+`"], "roles": ["application"]}`))); err == nil ||
		!strings.Contains(err.Error(), `unknown user "`+member+`"`) {
		t.Errorf("deleted user: err = %v", err)
	}
}
