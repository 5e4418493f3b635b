package policy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/user"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Version is the policy schema version this package reads. A file states it
// in its "version" field.
const Version = 1

// MaxFileSize bounds a policy file.
const MaxFileSize = 1 << 20

// maxErrors bounds how many problems one Parse reports.
const maxErrors = 20

// Roles. RoleAuditor, RoleOfficer and RoleReviewer are accepted in policy
// files and carried on principals, but grant no permission in this version.
const (
	RoleAdmin       = "admin"
	RoleApplication = "application"
	RoleAuditor     = "auditor"
	RoleOfficer     = "officer"
	RoleReviewer    = "reviewer"
	RoleCompliance  = "compliance" // sets participants' compliance status (docs/compliance.md)
)

var knownRoles = []string{RoleAdmin, RoleApplication, RoleAuditor, RoleOfficer, RoleReviewer, RoleCompliance}

var (
	// identRe is the syntax of principal and purpose names.
	identRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)
	// fieldRe is the syntax of a confidential field name.
	fieldRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`)
	// participantRe is the syntax of a participant id.
	participantRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$`)
	// participantPrefixRe is the syntax of the part before a trailing '*'.
	participantPrefixRe = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._:@-]{0,126})?$`)
)

// ValidParticipantID reports whether id has the syntax of a participant id:
// 1 to 128 characters from [A-Za-z0-9._:@-], starting with a letter or digit.
// AuthorizeDecrypt denies any other id.
func ValidParticipantID(id string) bool { return participantRe.MatchString(id) }

// defaultGroupFile is where group members are read from.
const defaultGroupFile = "/etc/group"

// resolver says where Parse resolves names; tests point groupFile elsewhere.
type resolver struct {
	groupFile string
}

// Parse reads a policy document (schema version 1, see docs/policy.md),
// validates it, and resolves every user and group it names. It returns nil
// and an error satisfying errors.Is(err, ErrInvalid) — one *FieldError per
// problem, joined — if anything is wrong; a valid document yields a
// *Policy that is immutable and safe for concurrent use.
func Parse(data []byte) (*Policy, error) {
	return resolver{groupFile: defaultGroupFile}.parse(data)
}

// checker collects errors with their paths.
type checker struct {
	errs []error
	n    int
}

func (c *checker) errf(path, format string, args ...any) {
	c.n++
	if len(c.errs) < maxErrors {
		c.errs = append(c.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
}

func (c *checker) err() error {
	if c.n == 0 {
		return nil
	}
	errs := c.errs
	if c.n > len(errs) {
		errs = append(errs, &FieldError{Msg: fmt.Sprintf("%d more errors not shown", c.n-len(errs))})
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// object checks that n is an object with only the known keys.
func (c *checker) object(n *node, path string, known ...string) bool {
	if n.kind != kindObject {
		c.errf(path, "must be an object, not %s", n.kind)
		return false
	}
	for _, k := range n.keys {
		if !slices.Contains(known, k) {
			c.errf(joinKey(path, k), "unknown field (known: %s)", strings.Join(known, ", "))
		}
	}
	return true
}

// str returns obj[key] as a string. A missing key is an error when required.
func (c *checker) str(obj *node, path, key string, required bool) (string, bool) {
	v := obj.field(key)
	if v == nil {
		if required {
			c.errf(joinKey(path, key), "required")
		}
		return "", false
	}
	if v.kind != kindString {
		c.errf(joinKey(path, key), "must be a string, not %s", v.kind)
		return "", false
	}
	return v.text, true
}

// array returns the elements of obj[key]. A missing key is an error when
// required; an empty array always is (omit an optional field instead).
func (c *checker) array(obj *node, path, key string, required bool) ([]*node, bool) {
	v := obj.field(key)
	if v == nil {
		if required {
			c.errf(joinKey(path, key), "required")
		}
		return nil, false
	}
	if v.kind != kindArray {
		c.errf(joinKey(path, key), "must be an array, not %s", v.kind)
		return nil, false
	}
	if len(v.vals) == 0 {
		if required {
			c.errf(joinKey(path, key), "must not be empty")
		} else {
			c.errf(joinKey(path, key), "must not be empty; omit the field instead")
		}
		return nil, false
	}
	return v.vals, true
}

// strs returns the string elements of obj[key] with their paths, rejecting
// non-strings and duplicates.
func (c *checker) strs(obj *node, path, key string, required bool) (vals, paths []string) {
	elems, ok := c.array(obj, path, key, required)
	if !ok {
		return nil, nil
	}
	base := joinKey(path, key)
	first := make(map[string]int)
	for i, e := range elems {
		p := joinIndex(base, i)
		if e.kind != kindString {
			c.errf(p, "must be a string, not %s", e.kind)
			continue
		}
		if j, dup := first[e.text]; dup {
			c.errf(p, "%q repeats %s", e.text, joinIndex(base, j))
			continue
		}
		first[e.text] = i
		vals = append(vals, e.text)
		paths = append(paths, p)
	}
	return vals, paths
}

func (r resolver) parse(data []byte) (*Policy, error) {
	if len(data) > MaxFileSize {
		return nil, &FieldError{Msg: fmt.Sprintf("policy is %d bytes, more than the %d allowed", len(data), MaxFileSize)}
	}
	root, err := readTree(data)
	if err != nil {
		return nil, err
	}
	c := &checker{}
	if !c.object(root, "", "version", "comment", "purposes", "principals", "participant_status", "second_factor") {
		return nil, c.err()
	}
	if v := root.field("version"); v == nil {
		c.errf("version", "required (this build reads version %d)", Version)
	} else if v.kind != kindNumber {
		c.errf("version", "must be a number, not %s", v.kind)
	} else if v.text != strconv.Itoa(Version) {
		c.errf("version", "unsupported version %s (this build reads version %d)", v.text, Version)
	}
	c.str(root, "", "comment", false)

	p := &Policy{
		digest:   sha256.Sum256(data),
		purposes: make(map[string]*purpose),
		byName:   make(map[string]*principal),
	}
	c.purposes(root, p)
	c.participantStatus(root, p) // status.go
	c.principals(root, p)
	c.secondFactor(root, p) // mfa.go; after principals, which it names
	if c.n > 0 {
		return nil, c.err()
	}
	r.resolve(c, p)
	if c.n > 0 {
		return nil, c.err()
	}
	return p, nil
}

func (c *checker) purposes(root *node, p *Policy) {
	elems, _ := c.array(root, "", "purposes", false)
	firstAt := make(map[string]string)
	for i, e := range elems {
		path := joinIndex("purposes", i)
		if !c.object(e, path, "name", "comment", "fields") {
			continue
		}
		c.str(e, path, "comment", false)
		name, ok := c.str(e, path, "name", true)
		if ok {
			if !identRe.MatchString(name) {
				c.errf(joinKey(path, "name"), "invalid purpose name %q (want [a-z][a-z0-9_-]*, at most 64)", name)
				ok = false
			} else if prev, dup := firstAt[name]; dup {
				c.errf(joinKey(path, "name"), "purpose %q is already defined at %s", name, prev)
				ok = false
			} else {
				firstAt[name] = path
			}
		}
		fields, paths := c.strs(e, path, "fields", true)
		pu := &purpose{name: name, set: make(map[string]bool)}
		for j, f := range fields {
			switch {
			case f == "*":
				if len(fields) > 1 {
					c.errf(paths[j], `"*" (all fields) must be the only entry`)
				}
				pu.all = true
			case !fieldRe.MatchString(f):
				c.errf(paths[j], "invalid field name %q (want [A-Za-z_][A-Za-z0-9_.-]*, at most 64)", f)
			default:
				pu.set[f] = true
				pu.fields = append(pu.fields, f)
			}
		}
		sort.Strings(pu.fields)
		if ok {
			p.purposes[name] = pu
		}
	}
}

func (c *checker) principals(root *node, p *Policy) {
	elems, _ := c.array(root, "", "principals", true)
	firstAt := make(map[string]string)
	for i, e := range elems {
		path := joinIndex("principals", i)
		if !c.object(e, path, "name", "comment", "users", "groups", "roles", "act_as", "seal_for") {
			continue
		}
		c.str(e, path, "comment", false)
		pr := &principal{index: i, roles: make(map[string]bool)}
		name, ok := c.str(e, path, "name", true)
		if ok {
			if !identRe.MatchString(name) {
				c.errf(joinKey(path, "name"), "invalid principal name %q (want [a-z][a-z0-9_-]*, at most 64)", name)
				ok = false
			} else if prev, dup := firstAt[name]; dup {
				c.errf(joinKey(path, "name"), "principal %q is already defined at %s", name, prev)
				ok = false
			} else {
				firstAt[name] = path
			}
		}
		pr.name = name
		users, upaths := c.strs(e, path, "users", false)
		for j, u := range users {
			if !validSystemName(u) {
				c.errf(upaths[j], "invalid user name %q", u)
				continue
			}
			pr.users = append(pr.users, nameRef{name: u, path: upaths[j]})
		}
		groups, gpaths := c.strs(e, path, "groups", false)
		for j, g := range groups {
			if !validSystemName(g) {
				c.errf(gpaths[j], "invalid group name %q", g)
				continue
			}
			pr.groups = append(pr.groups, nameRef{name: g, path: gpaths[j]})
		}
		if e.field("users") == nil && e.field("groups") == nil {
			c.errf(path, "names no users and no groups, so it would cover nobody")
		}
		roles, rpaths := c.strs(e, path, "roles", true)
		for j, r := range roles {
			if !slices.Contains(knownRoles, r) {
				c.errf(rpaths[j], "unknown role %q (known: %s)", r, strings.Join(knownRoles, ", "))
				continue
			}
			pr.roles[r] = true
			pr.roleList = append(pr.roleList, r)
		}
		sort.Strings(pr.roleList)
		if e.field("act_as") != nil && !slices.Contains(roles, RoleApplication) {
			c.errf(joinKey(path, "act_as"), "grants need role %q, which this principal lacks", RoleApplication)
		}
		grants, _ := c.array(e, path, "act_as", false)
		for k, g := range grants {
			if gr, ok := c.grant(g, joinIndex(joinKey(path, "act_as"), k), p); ok {
				pr.grants = append(pr.grants, gr)
			}
		}
		if e.field("seal_for") != nil && !slices.Contains(roles, RoleApplication) {
			c.errf(joinKey(path, "seal_for"), "seal grants need role %q, which this principal lacks", RoleApplication)
		}
		seals, _ := c.array(e, path, "seal_for", false)
		for k, g := range seals {
			if sg, ok := c.sealGrant(g, joinIndex(joinKey(path, "seal_for"), k)); ok {
				pr.seals = append(pr.seals, sg)
			}
		}
		if ok {
			p.principals = append(p.principals, pr)
			p.byName[name] = pr
		}
	}
}

func (c *checker) grant(e *node, path string, p *Policy) (grant, bool) {
	var g grant
	if !c.object(e, path, "participants", "purposes", "windows", "comment") {
		return g, false
	}
	c.str(e, path, "comment", false)
	n := c.n
	parts, ppaths := c.strs(e, path, "participants", true)
	for j, s := range parts {
		pat, err := parsePattern(s)
		if err != nil {
			c.errf(ppaths[j], "%v", err)
			continue
		}
		g.participants = append(g.participants, pat)
	}
	purposes, upaths := c.strs(e, path, "purposes", true)
	g.purposes = make(map[string]bool)
	for j, s := range purposes {
		if _, ok := p.purposes[s]; !ok {
			c.errf(upaths[j], "unknown purpose %q", s)
			continue
		}
		g.purposes[s] = true
	}
	wins, _ := c.array(e, path, "windows", false)
	for k, w := range wins {
		if win, ok := c.window(w, joinIndex(joinKey(path, "windows"), k)); ok {
			g.windows = append(g.windows, win)
		}
	}
	return g, c.n == n
}

// sealGrant parses one seal_for entry: {"participants": [patterns],
// "transactions": [patterns], "comment"}. "transactions" is optional (absent:
// every transaction id); when present it must not be empty.
func (c *checker) sealGrant(e *node, path string) (sealGrant, bool) {
	var g sealGrant
	if !c.object(e, path, "participants", "transactions", "comment") {
		return g, false
	}
	c.str(e, path, "comment", false)
	n := c.n
	parts, ppaths := c.strs(e, path, "participants", true)
	for j, s := range parts {
		pat, err := parsePattern(s)
		if err != nil {
			c.errf(ppaths[j], "%v", err)
			continue
		}
		g.participants = append(g.participants, pat)
	}
	if e.field("transactions") != nil {
		txs, tpaths := c.strs(e, path, "transactions", true) // an empty list is refused
		for j, s := range txs {
			pat, err := parseTxPattern(s)
			if err != nil {
				c.errf(tpaths[j], "%v", err)
				continue
			}
			g.transactions = append(g.transactions, pat)
		}
	}
	return g, c.n == n
}

// txRe and txPrefixRe are the syntax of a transaction id (the envelope's id
// rule) and of the part of a transaction pattern before its trailing '*'.
var (
	txRe       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	txPrefixRe = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._:-]{0,126})?$`)
)

func parseTxPattern(s string) (pattern, error) {
	if prefix, ok := strings.CutSuffix(s, "*"); ok {
		if !txPrefixRe.MatchString(prefix) {
			return pattern{}, fmt.Errorf("invalid transaction pattern %q (an id, or an id prefix followed by one trailing '*')", s)
		}
		return pattern{prefix: prefix, wildcard: true}, nil
	}
	if !txRe.MatchString(s) {
		return pattern{}, fmt.Errorf("invalid transaction id %q (1 to 128 of [A-Za-z0-9._:-], starting with a letter or digit; or a prefix followed by '*')", s)
	}
	return pattern{prefix: s}, nil
}

func parsePattern(s string) (pattern, error) {
	if prefix, ok := strings.CutSuffix(s, "*"); ok {
		if !participantPrefixRe.MatchString(prefix) {
			return pattern{}, fmt.Errorf("invalid participant pattern %q (an id, or an id prefix followed by one trailing '*')", s)
		}
		return pattern{prefix: prefix, wildcard: true}, nil
	}
	if !participantRe.MatchString(s) {
		return pattern{}, fmt.Errorf("invalid participant id %q (1 to 128 of [A-Za-z0-9._:@-], starting with a letter or digit; or a prefix followed by '*')", s)
	}
	return pattern{prefix: s}, nil
}

func (c *checker) window(e *node, path string) (window, bool) {
	w := window{loc: time.UTC}
	if !c.object(e, path, "days", "start", "end", "time_zone", "comment") {
		return w, false
	}
	c.str(e, path, "comment", false)
	n := c.n
	if e.field("days") == nil {
		w.days = [7]bool{true, true, true, true, true, true, true}
	}
	days, dpaths := c.strs(e, path, "days", false)
	for j, s := range days {
		d, ok := parseDay(s)
		if !ok {
			c.errf(dpaths[j], "unknown day %q (known: %s)", s, strings.Join(dayNames[:], ", "))
			continue
		}
		w.days[d] = true
	}
	var err error
	start, okS := c.str(e, path, "start", true)
	if okS {
		if w.start, err = parseClock(start, false); err != nil {
			c.errf(joinKey(path, "start"), "%v", err)
			okS = false
		}
	}
	end, okE := c.str(e, path, "end", true)
	if okE {
		if w.end, err = parseClock(end, true); err != nil {
			c.errf(joinKey(path, "end"), "%v", err)
			okE = false
		}
	}
	if okS && okE && w.start == w.end {
		c.errf(joinKey(path, "end"), "equals start; a window must not be empty (00:00 to 24:00 is a whole day)")
	}
	if tz, ok := c.str(e, path, "time_zone", false); ok {
		if w.loc, err = loadZone(tz); err != nil {
			c.errf(joinKey(path, "time_zone"), "%v", err)
		}
	}
	return w, c.n == n
}

// resolve turns user and group names into uids, gids and member uid sets,
// and rejects every ambiguity visible at load time.
func (r resolver) resolve(c *checker, p *Policy) {
	p.byUID = make(map[uint32]*principal)
	p.byGID = make(map[uint32]*principal)
	p.byMember = make(map[uint32][]*principal)
	uidAt := make(map[uint32]string) // uid → path that named it
	gidAt := make(map[uint32]string)
	gidRef := make(map[uint32]nameRef) // gid → the group entry that named it

	var groupFile map[string]groupEntry
	var groupFileErr error
	groupFileRead := false

	// via records how a uid is covered through a group, for the ambiguity check.
	type via struct {
		pr    *principal
		group nameRef
	}
	covered := make(map[uint32][]via)  // uid → principals covering it through /etc/group
	primary := make(map[uint32]uint32) // uid → primary gid, for those uids
	memberName := make(map[uint32]string)

	for _, pr := range p.principals {
		for _, u := range pr.users {
			uid, err := lookupUID(u.name)
			if err != nil {
				c.errf(u.path, "%v", err)
				continue
			}
			if prev, dup := uidAt[uid]; dup {
				c.errf(u.path, "user %q (uid %d) is already named at %s; a uid maps to at most one principal", u.name, uid, prev)
				continue
			}
			uidAt[uid] = u.path
			p.byUID[uid] = pr
			p.nUsers++
		}
		for _, g := range pr.groups {
			gid, err := lookupGID(g.name)
			if err != nil {
				c.errf(g.path, "%v", err)
				continue
			}
			if prev, dup := gidAt[gid]; dup {
				c.errf(g.path, "group %q (gid %d) is already named at %s; a group belongs to at most one principal", g.name, gid, prev)
				continue
			}
			gidAt[gid] = g.path
			gidRef[gid] = g
			p.byGID[gid] = pr
			p.nGroups++
			if !groupFileRead {
				groupFileRead = true
				groupFile, groupFileErr = readGroupFilePath(r.groupFile)
			}
			if groupFileErr != nil {
				c.errf(g.path, "reading members of group %q: %s: %v", g.name, r.groupFile, groupFileErr)
				continue
			}
			entry, ok := groupFile[g.name]
			if !ok {
				continue // known to os/user only (LDAP, sssd …): matches by gid only
			}
			if entry.gid != gid {
				c.errf(g.path, "group %q has gid %d in the user database but %d in %s", g.name, gid, entry.gid, r.groupFile)
				continue
			}
			for _, m := range entry.members {
				u, err := user.Lookup(m)
				if err != nil {
					continue // stale member name: grants nothing
				}
				uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
				pgid, err2 := strconv.ParseUint(u.Gid, 10, 32)
				if err1 != nil || err2 != nil {
					continue
				}
				id := uint32(uid)
				if !slices.ContainsFunc(covered[id], func(v via) bool { return v.pr == pr }) {
					covered[id] = append(covered[id], via{pr, g})
					p.byMember[id] = append(p.byMember[id], pr)
				}
				primary[id] = uint32(pgid)
				memberName[id] = m
			}
		}
	}

	// A uid not named directly must be covered by at most one principal
	// through groups: by membership in /etc/group or by its primary gid.
	uids := make([]uint32, 0, len(covered))
	for uid := range covered {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	for _, uid := range uids {
		if _, direct := p.byUID[uid]; direct {
			continue
		}
		vs := covered[uid]
		if pr, ok := p.byGID[primary[uid]]; ok && !slices.ContainsFunc(vs, func(v via) bool { return v.pr == pr }) {
			vs = append(vs, via{pr, gidRef[primary[uid]]})
		}
		if len(vs) < 2 {
			continue
		}
		slices.SortFunc(vs, func(a, b via) int { return a.pr.index - b.pr.index })
		a, b := vs[0], vs[1]
		c.errf(b.group.path, "user %q (uid %d) is covered both by principal %q (group %q) and by principal %q (group %q); name the user in one principal's users to decide",
			memberName[uid], uid, a.pr.name, a.group.name, b.pr.name, b.group.name)
	}
}

func readGroupFilePath(path string) (map[string]groupEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readGroupFile(f)
}

func lookupUID(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return 0, fmt.Errorf("unknown user %q", name)
		}
		return 0, fmt.Errorf("looking up user %q: %v", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has a non-numeric uid %q", name, u.Uid)
	}
	return uint32(uid), nil
}

func lookupGID(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return 0, fmt.Errorf("unknown group %q", name)
		}
		return 0, fmt.Errorf("looking up group %q: %v", name, err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has a non-numeric gid %q", name, g.Gid)
	}
	return uint32(gid), nil
}
