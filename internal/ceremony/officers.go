package ceremony

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/user"
	"regexp"
	"strconv"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"
)

// Officer is a security officer: a Unix user with an age recipient to
// receive a share and an Ed25519 note verifier to co-sign transcripts.
type Officer struct {
	Name         string // unique, [a-z0-9-]{1,32}; the note key's name must equal it
	User         string // Unix user name
	UID          uint32 // resolved from User when the file is loaded
	AgeRecipient string // "age1…" X25519 recipient
	Signer       string // note verifier key "name+hash+base64"

	recipient *age.X25519Recipient
	verifier  note.Verifier
}

// Recipient is the officer's parsed age recipient.
func (o Officer) Recipient() *age.X25519Recipient { return o.recipient }

// Verifier is the officer's parsed note verifier.
func (o Officer) Verifier() note.Verifier { return o.verifier }

// Officers is a parsed officers file, in file order.
type Officers struct {
	List []Officer
}

// Equal reports whether os and other name the same officers, in the same
// order, with the same users, recipients and signer keys.
func (os *Officers) Equal(other *Officers) bool {
	if len(os.List) != len(other.List) {
		return false
	}
	for i, o := range os.List {
		p := other.List[i]
		if o.Name != p.Name || o.User != p.User || o.UID != p.UID || o.AgeRecipient != p.AgeRecipient || o.Signer != p.Signer {
			return false
		}
	}
	return true
}

// ByUID returns the officer whose Unix user has uid, or ErrNotOfficer.
func (os *Officers) ByUID(uid uint32) (Officer, error) {
	for _, o := range os.List {
		if o.UID == uid {
			return o, nil
		}
	}
	return Officer{}, fmt.Errorf("%w: uid %d", ErrNotOfficer, uid)
}

// ByName returns the officer called name, or ErrNotOfficer.
func (os *Officers) ByName(name string) (Officer, error) {
	for _, o := range os.List {
		if o.Name == name {
			return o, nil
		}
	}
	return Officer{}, fmt.Errorf("%w: %q", ErrNotOfficer, name)
}

// Verifiers returns every officer's note verifier.
func (os *Officers) Verifiers() []note.Verifier {
	out := make([]note.Verifier, len(os.List))
	for i, o := range os.List {
		out[i] = o.verifier
	}
	return out
}

var officerNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// MaxOfficersFile bounds an officers file.
const MaxOfficersFile = 1 << 20

// LookupUID resolves a Unix user name to its uid (os/user).
func LookupUID(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(n), err
}

// ParseOfficers parses an officers file:
//
//	{"version": 1, "officers": [{"name": "o1", "user": "custody-o1",
//	  "age_recipient": "age1…", "signer": "o1+1a2b3c4d+AbC…"}]}
//
// Strict: unknown fields, duplicates (name, user, recipient, signer key),
// a signer whose key name differs from the officer name, or a user that
// lookup cannot resolve are ErrOfficers. lookup nil means LookupUID.
func ParseOfficers(data []byte, lookup func(string) (uint32, error)) (*Officers, error) {
	if lookup == nil {
		lookup = LookupUID
	}
	if len(data) > MaxOfficersFile {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrOfficers, MaxOfficersFile)
	}
	var f struct {
		Version  int    `json:"version"`
		Comment  string `json:"comment"`
		Officers []struct {
			Name         string `json:"name"`
			User         string `json:"user"`
			AgeRecipient string `json:"age_recipient"`
			Signer       string `json:"signer"`
			Comment      string `json:"comment"`
		} `json:"officers"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOfficers, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrOfficers)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("%w: version %d, want 1", ErrOfficers, f.Version)
	}
	if len(f.Officers) == 0 || len(f.Officers) > 255 {
		return nil, fmt.Errorf("%w: %d officers, want 1..255", ErrOfficers, len(f.Officers))
	}
	out := &Officers{}
	seen := map[string]bool{}
	for i, o := range f.Officers {
		if !officerNameRe.MatchString(o.Name) {
			return nil, fmt.Errorf("%w: officers[%d]: bad name %q", ErrOfficers, i, o.Name)
		}
		r, err := age.ParseX25519Recipient(o.AgeRecipient)
		if err != nil {
			return nil, fmt.Errorf("%w: officer %s: age_recipient: %v", ErrOfficers, o.Name, err)
		}
		v, err := note.NewVerifier(o.Signer)
		if err != nil {
			return nil, fmt.Errorf("%w: officer %s: signer: %v", ErrOfficers, o.Name, err)
		}
		if v.Name() != o.Name {
			return nil, fmt.Errorf("%w: officer %s: signer key is named %q, want the officer name", ErrOfficers, o.Name, v.Name())
		}
		for _, k := range []string{"n:" + o.Name, "u:" + o.User, "r:" + o.AgeRecipient, "s:" + o.Signer} {
			if seen[k] {
				return nil, fmt.Errorf("%w: officer %s: duplicate %s", ErrOfficers, o.Name, k)
			}
			seen[k] = true
		}
		uid, err := lookup(o.User)
		if err != nil {
			return nil, fmt.Errorf("%w: officer %s: user %q: %v", ErrOfficers, o.Name, o.User, err)
		}
		out.List = append(out.List, Officer{Name: o.Name, User: o.User, UID: uid, AgeRecipient: o.AgeRecipient,
			Signer: o.Signer, recipient: r, verifier: v})
	}
	return out, nil
}
