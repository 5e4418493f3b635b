package policy

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"custody/internal/safefile"
)

// Permission names an API operation. Each route of the server declares the
// one it needs and calls Authorize.
type Permission string

// Permissions and the roles that carry them.
const (
	PermHealth               Permission = "health"                // every known principal
	PermParticipantsRegister Permission = "participants.register" // admin
	PermParticipantsRead     Permission = "participants.read"     // admin, application
	PermEncrypt              Permission = "transactions.encrypt"  // application
	PermDecrypt              Permission = "transactions.decrypt"  // application; per-request checks via AuthorizeDecrypt
	PermLogRead              Permission = "log.read"              // reviewer: checkpoints, entries, proofs
	PermAuditDecrypt         Permission = "audit.decrypt"         // auditor; per-request checks against a court order in Vault
	PermKeysAdmin            Permission = "keys.admin"            // admin: list keys, rotate, retire (destroy) versions
	PermRewrap               Permission = "envelopes.rewrap"      // admin, application: move envelopes to active key versions
	PermKeysProve            Permission = "keys.prove"            // every known principal: proof of possession
	PermCeremony             Permission = "ceremony"              // officer (and listed in the officers file): escrow key ceremonies
	PermEnvelopesInspect     Permission = "envelopes.inspect"     // every known principal: an envelope's header, no key use, no plaintext
)

// permRoles maps each permission to the roles that carry it; nil means every
// known principal.
var permRoles = map[Permission][]string{
	PermHealth:               nil,
	PermParticipantsRegister: {RoleAdmin},
	PermParticipantsRead:     {RoleAdmin, RoleApplication},
	PermEncrypt:              {RoleApplication},
	PermDecrypt:              {RoleApplication},
	PermLogRead:              {RoleReviewer},
	PermAuditDecrypt:         {RoleAuditor},
	PermKeysAdmin:            {RoleAdmin},
	PermRewrap:               {RoleAdmin, RoleApplication},
	PermKeysProve:            nil,
	PermCeremony:             {RoleOfficer},
	PermEnvelopesInspect:     nil,
}

// Caller is a peer process as the kernel reports it (SO_PEERCRED).
type Caller struct {
	UID, GID uint32
	PID      int32 // for the log only; never used in a decision
}

// Principal is who a caller is, as Identify found it. Roles is sorted and
// informational: Authorize and AuthorizeDecrypt look the principal up by Name
// in the policy they are called on and use the roles recorded there.
type Principal struct {
	Name  string
	Roles []string
}

// Policy is a parsed, resolved policy. It is immutable and safe for
// concurrent use. The zero value and nil deny everything.
type Policy struct {
	digest     [32]byte
	purposes   map[string]*purpose
	principals []*principal // in file order
	byName     map[string]*principal
	byUID      map[uint32]*principal   // users named directly
	byGID      map[uint32]*principal   // groups, matched against the caller's gid
	byMember   map[uint32][]*principal // uid → principals whose groups list it in /etc/group
	nUsers     int
	nGroups    int
	status     *statusRules  // the participant_status section (status.go); nil: none
	factor     *secondFactor // the second_factor section (mfa.go); nil: none
}

type purpose struct {
	name   string
	all    bool
	fields []string // sorted; empty when all
	set    map[string]bool
}

type nameRef struct {
	name string
	path string
}

type principal struct {
	index    int // position in the file
	name     string
	users    []nameRef
	groups   []nameRef
	roles    map[string]bool
	roleList []string // sorted
	grants   []grant
	seals    []sealGrant
}

// sealGrant lets a principal seal envelopes for the matching participants,
// under the matching transaction ids (any, when transactions is empty).
type sealGrant struct {
	participants []pattern
	transactions []pattern
}

func (g *sealGrant) match(participant, txid string) bool {
	if !slices.ContainsFunc(g.participants, func(pt pattern) bool { return pt.match(participant) }) {
		return false
	}
	return len(g.transactions) == 0 || slices.ContainsFunc(g.transactions, func(pt pattern) bool { return pt.match(txid) })
}

// grant lets a principal act as the matching participants for the listed
// purposes, during any of its windows (always, when it has none).
type grant struct {
	participants []pattern
	purposes     map[string]bool
	windows      []window
}

type pattern struct {
	prefix   string
	wildcard bool // prefix match; otherwise exact
}

func (pt pattern) match(id string) bool {
	if pt.wildcard {
		return strings.HasPrefix(id, pt.prefix)
	}
	return id == pt.prefix
}

func (g *grant) matchParticipant(id string) bool {
	return slices.ContainsFunc(g.participants, func(pt pattern) bool { return pt.match(id) })
}

func (g *grant) open(t time.Time) bool {
	if len(g.windows) == 0 {
		return true
	}
	for i := range g.windows {
		if g.windows[i].contains(t) {
			return true
		}
	}
	return false
}

// Load reads and parses the policy file at path. It refuses, with
// ErrUnsafeFile, a path that is not a regular file, a file that is group- or
// world-writable, and a file owned by anyone but root or the effective uid
// (the checks of package safefile, shared with the officers and PIN files).
// Parse errors are returned as from Parse, prefixed with the path.
func Load(path string) (*Policy, error) {
	f, err := safefile.Open(path)
	if errors.Is(err, safefile.ErrUnsafe) {
		return nil, fmt.Errorf("%w: %w", ErrUnsafeFile, err)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// Identify returns the one principal covering the caller: the principal
// naming the caller's user if there is one, else the one principal whose
// groups cover the caller's gid or (through /etc/group membership, as read at
// load time) its uid. No principal, or more than one through groups, is
// ErrUnknownCaller. Identify does no I/O.
func (p *Policy) Identify(c Caller) (Principal, error) {
	if p == nil {
		return Principal{}, fmt.Errorf("%w: no policy", ErrUnknownCaller)
	}
	if pr, ok := p.byUID[c.UID]; ok {
		return pr.public(), nil
	}
	var found *principal
	if pr, ok := p.byGID[c.GID]; ok {
		found = pr
	}
	for _, pr := range p.byMember[c.UID] {
		if found != nil && found != pr {
			return Principal{}, fmt.Errorf("%w: uid %d gid %d is covered by principals %q and %q through groups; name the user in one of them",
				ErrUnknownCaller, c.UID, c.GID, found.name, pr.name)
		}
		found = pr
	}
	if found == nil {
		return Principal{}, fmt.Errorf("%w: no principal covers uid %d gid %d", ErrUnknownCaller, c.UID, c.GID)
	}
	return found.public(), nil
}

func (pr *principal) public() Principal {
	return Principal{Name: pr.name, Roles: slices.Clone(pr.roleList)}
}

func (p *Policy) lookup(pr Principal) (*principal, error) {
	if p != nil {
		if rec, ok := p.byName[pr.Name]; ok {
			return rec, nil
		}
	}
	return nil, fmt.Errorf("%w: principal %q is not in the current policy", ErrDenied, pr.Name)
}

// Authorize returns nil if the principal's roles, as this policy records
// them, carry perm. Otherwise it returns an error satisfying
// errors.Is(err, ErrDenied) whose message names the role that would allow
// it. Unknown permissions and principals are denied.
func (p *Policy) Authorize(pr Principal, perm Permission) error {
	rec, err := p.lookup(pr)
	if err != nil {
		return err
	}
	roles, known := permRoles[perm]
	if !known {
		return fmt.Errorf("%w: unknown permission %q", ErrDenied, perm)
	}
	if roles == nil {
		return nil
	}
	for _, r := range roles {
		if rec.roles[r] {
			return nil
		}
	}
	return fmt.Errorf("%w: principal %q lacks permission %s, which needs role %s",
		ErrDenied, rec.name, perm, strings.Join(roles, " or "))
}

// AuthorizeDecrypt decides whether the principal may decrypt as participant
// for purpose at instant now, and which fields the answer may carry. An empty
// requested list means every field the purpose may see. It returns, in
// order of checking:
//
//   - ErrDenied: the principal is not in this policy or lacks role application;
//   - ErrNotParticipant: no grant of the principal matches participant (or the
//     id is not a valid participant id);
//   - ErrPurpose: the purpose is unknown, or no grant matching participant lists it;
//   - ErrOutsideWindow: grants match participant and purpose, but none is open at now;
//   - ErrFieldDenied: a requested field is not visible to the purpose.
//
// All of them satisfy errors.Is(err, ErrDenied). On success the Disclosure
// lists the visible fields: the requested ones, or the purpose's.
func (p *Policy) AuthorizeDecrypt(pr Principal, participant, purposeName string, requested []string, now time.Time) (Disclosure, error) {
	rec, err := p.lookup(pr)
	if err != nil {
		return Disclosure{}, err
	}
	if !rec.roles[RoleApplication] {
		return Disclosure{}, fmt.Errorf("%w: principal %q lacks permission %s, which needs role %s",
			ErrDenied, rec.name, PermDecrypt, RoleApplication)
	}
	if !ValidParticipantID(participant) {
		return Disclosure{}, fmt.Errorf("%w: %q is not a valid participant id", ErrNotParticipant, participant)
	}
	var matching []*grant
	for i := range rec.grants {
		if rec.grants[i].matchParticipant(participant) {
			matching = append(matching, &rec.grants[i])
		}
	}
	if len(matching) == 0 {
		return Disclosure{}, fmt.Errorf("%w: principal %q may not act as participant %q", ErrNotParticipant, rec.name, participant)
	}
	pu, ok := p.purposes[purposeName]
	if !ok {
		return Disclosure{}, fmt.Errorf("%w: unknown purpose %q", ErrPurpose, purposeName)
	}
	granted := false
	open := false
	for _, g := range matching {
		if g.purposes[purposeName] {
			granted = true
			if g.open(now) {
				open = true
				break
			}
		}
	}
	if !granted {
		return Disclosure{}, fmt.Errorf("%w: principal %q may not act as participant %q for purpose %q", ErrPurpose, rec.name, participant, purposeName)
	}
	if !open {
		return Disclosure{}, fmt.Errorf("%w: principal %q may act as participant %q for purpose %q only inside its time windows; it is %s",
			ErrOutsideWindow, rec.name, participant, purposeName, now.UTC().Format(time.RFC3339))
	}
	if len(requested) == 0 {
		if pu.all {
			return Disclosure{all: true}, nil
		}
		return Disclosure{fields: slices.Clone(pu.fields)}, nil
	}
	fields := make([]string, 0, len(requested))
	for _, f := range requested {
		if f == "" || f == "*" || !(pu.all || pu.set[f]) {
			return Disclosure{}, fmt.Errorf("%w: purpose %q may not see field %q", ErrFieldDenied, purposeName, f)
		}
		fields = append(fields, f)
	}
	slices.Sort(fields)
	return Disclosure{fields: slices.Compact(fields)}, nil
}

// AuthorizeSeal decides whether the principal may seal an envelope of
// transaction txid for every one of participants. Each participant must be
// matched by one of the principal's seal_for grants whose transaction
// patterns (if it has any) match txid; nothing else allows a seal (deny by
// default: act_as grants do not). It returns nil, ErrDenied when the
// principal is not in this policy or lacks role application, or
// ErrSealDenied naming the first participant no grant covers.
func (p *Policy) AuthorizeSeal(pr Principal, txid string, participants []string) error {
	rec, err := p.lookup(pr)
	if err != nil {
		return err
	}
	if !rec.roles[RoleApplication] {
		return fmt.Errorf("%w: principal %q lacks permission %s, which needs role %s",
			ErrDenied, rec.name, PermEncrypt, RoleApplication)
	}
	for _, id := range participants {
		if !slices.ContainsFunc(rec.seals, func(g sealGrant) bool { return g.match(id, txid) }) {
			return fmt.Errorf("%w: principal %q may not seal for participant %q under transaction %q", ErrSealDenied, rec.name, id, txid)
		}
	}
	return nil
}

// Summary describes the policy in one line, for logs and `policy check`:
// schema version, SHA-256 of the source (first 16 hex digits, see Digest),
// and counts of principals, the users and groups they name, purposes and
// act_as grants.
func (p *Policy) Summary() string {
	if p == nil {
		return "no policy"
	}
	grants := 0
	for _, pr := range p.principals {
		grants += len(pr.grants)
	}
	return fmt.Sprintf("policy v%d sha256:%s: %d principals (%d users, %d groups), %d purposes, %d grants",
		Version, p.Digest()[:16], len(p.principals), p.nUsers, p.nGroups, len(p.purposes), grants)
}

// Digest is the hex SHA-256 of the bytes the policy was parsed from, so the
// access log can say which policy was in force.
func (p *Policy) Digest() string {
	if p == nil {
		return ""
	}
	return hex.EncodeToString(p.digest[:])
}
