package ceremony

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// Transcript records one ceremony. Its text (Text) is the body of a
// signed note (golang.org/x/mod/sumdb/note): the daemon signs it with the
// access log's Ed25519 key, officers co-sign it with their own keys
// (Cosign), and anyone verifies it offline (VerifyTranscript).
//
//	custody ceremony transcript v1
//	kind backup
//	request <id> <request hash>
//	time <RFC 3339>
//	token <serial> <label>
//	participant <officer> <role: requester|approver|share-holder|submitter>
//	fingerprint <key label> <sha256 hex>
//	output <file name> <sha256 hex>
//	kcv <hex>
//	deviation <free text>
//
// participant, fingerprint, output and deviation lines repeat; kcv is
// present for backup and restore. No line holds a secret.
type Transcript struct {
	Kind         string
	RequestID    string
	RequestHash  string
	Time         time.Time
	TokenSerial  string
	TokenLabel   string
	Participants [][2]string // officer, role
	Fingerprints [][2]string // key label, hex
	Outputs      [][2]string // file name, sha256 hex
	KCV          string
	Deviations   []string
}

const transcriptMagic = "custody ceremony transcript v1"

var tokenRe = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)

// Text encodes t. Fields are single tokens (no spaces) except deviations.
func (t *Transcript) Text() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nkind %s\nrequest %s %s\ntime %s\ntoken %s %s\n", transcriptMagic, t.Kind, t.RequestID, t.RequestHash,
		t.Time.UTC().Format(time.RFC3339), t.TokenSerial, t.TokenLabel)
	for _, set := range []struct {
		name string
		rows [][2]string
	}{{"participant", t.Participants}, {"fingerprint", t.Fingerprints}, {"output", t.Outputs}} {
		for _, r := range set.rows {
			fmt.Fprintf(&b, "%s %s %s\n", set.name, r[0], r[1])
		}
	}
	if t.KCV != "" {
		fmt.Fprintf(&b, "kcv %s\n", t.KCV)
	}
	for _, d := range t.Deviations {
		fmt.Fprintf(&b, "deviation %s\n", d)
	}
	s := b.String()
	if _, err := ParseTranscript(s); err != nil {
		return "", err
	}
	return s, nil
}

// ParseTranscript parses a transcript body strictly (ErrFormat).
func ParseTranscript(text string) (*Transcript, error) {
	bad := func(f string, a ...any) (*Transcript, error) {
		return nil, fmt.Errorf("%w: transcript: %s", ErrFormat, fmt.Sprintf(f, a...))
	}
	if len(text) > 64<<10 || !strings.HasSuffix(text, "\n") {
		return bad("too large or not newline-terminated")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 5 || lines[0] != transcriptMagic {
		return bad("not a %q", transcriptMagic)
	}
	t := &Transcript{}
	fields := func(i, n int, name string) ([]string, error) {
		f := strings.Split(lines[i], " ")
		if len(f) != n+1 || f[0] != name {
			return nil, fmt.Errorf("line %d: want %q with %d fields", i+1, name, n)
		}
		for _, x := range f[1:] {
			if !tokenRe.MatchString(x) {
				return nil, fmt.Errorf("line %d: bad field", i+1)
			}
		}
		return f[1:], nil
	}
	f, err := fields(1, 1, "kind")
	if err != nil {
		return bad("%v", err)
	}
	t.Kind = f[0]
	if f, err = fields(2, 2, "request"); err != nil {
		return bad("%v", err)
	}
	t.RequestID, t.RequestHash = f[0], f[1]
	if f, err = fields(3, 1, "time"); err != nil {
		return bad("%v", err)
	}
	if t.Time, err = time.Parse(time.RFC3339, f[0]); err != nil {
		return bad("time: %v", err)
	}
	if f, err = fields(4, 2, "token"); err != nil {
		return bad("%v", err)
	}
	t.TokenSerial, t.TokenLabel = f[0], f[1]
	stage := 0 // participant, fingerprint, output, kcv, deviation in this order
	order := []string{"participant", "fingerprint", "output", "kcv", "deviation"}
	for i := 5; i < len(lines); i++ {
		name, rest, _ := strings.Cut(lines[i], " ")
		k := -1
		for j, o := range order {
			if o == name {
				k = j
			}
		}
		if k < stage {
			return bad("line %d: %q out of order or unknown", i+1, name)
		}
		stage = k
		switch name {
		case "participant", "fingerprint", "output":
			f, err := fields(i, 2, name)
			if err != nil {
				return bad("%v", err)
			}
			row := [2]string{f[0], f[1]}
			switch name {
			case "participant":
				t.Participants = append(t.Participants, row)
			case "fingerprint":
				t.Fingerprints = append(t.Fingerprints, row)
			default:
				t.Outputs = append(t.Outputs, row)
			}
		case "kcv":
			f, err := fields(i, 1, name)
			if err != nil || t.KCV != "" {
				return bad("line %d: one kcv field", i+1)
			}
			t.KCV = f[0]
			stage = 4 // only deviations may follow
		case "deviation":
			if rest == "" || strings.ContainsAny(rest, "\r\x00") {
				return bad("line %d: empty deviation", i+1)
			}
			t.Deviations = append(t.Deviations, rest)
		}
	}
	return t, nil
}

// SignTranscript returns the signed note of text, signed by signer (the
// daemon's log key; see auditlog.EnsureDeviceSigner).
func SignTranscript(text string, signer note.Signer) ([]byte, error) {
	if _, err := ParseTranscript(text); err != nil {
		return nil, err
	}
	return note.Sign(&note.Note{Text: text}, signer)
}

// Cosign adds signer's signature to a signed transcript, keeping every
// signature already there (verified or not: the co-signer vouches only for
// the text). A second signature by the same key is refused.
func Cosign(signed []byte, signer note.Signer) ([]byte, error) {
	n, err := note.Open(signed, note.VerifierList())
	var unv *note.UnverifiedNoteError
	if errors.As(err, &unv) {
		n, err = unv.Note, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if _, err := ParseTranscript(n.Text); err != nil {
		return nil, err
	}
	for _, s := range append(n.Sigs, n.UnverifiedSigs...) {
		if s.Name == signer.Name() && s.Hash == signer.KeyHash() {
			return nil, fmt.Errorf("%w: already signed by %s", ErrFormat, s.Name)
		}
	}
	n.Sigs = append(n.Sigs, n.UnverifiedSigs...)
	n.UnverifiedSigs = nil
	return note.Sign(n, signer)
}

// Verified is what VerifyTranscript found.
type Verified struct {
	Transcript *Transcript
	Cosigners  []string // officer names whose signatures verified
}

// VerifyTranscript checks a signed transcript offline: the log key's
// signature is required, every signature present must verify against a
// known key (officers or the log key; an unknown signer is ErrTranscript),
// and at least minCosigners officers must have co-signed. Any change to the
// text, one byte included, breaks every signature.
func VerifyTranscript(signed []byte, logKey note.Verifier, officers []note.Verifier, minCosigners int) (*Verified, error) {
	n, err := note.Open(signed, note.VerifierList(append([]note.Verifier{logKey}, officers...)...))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTranscript, err)
	}
	if len(n.UnverifiedSigs) > 0 {
		return nil, fmt.Errorf("%w: signature by unknown key %s", ErrTranscript, n.UnverifiedSigs[0].Name)
	}
	t, err := ParseTranscript(n.Text)
	if err != nil {
		return nil, err
	}
	v := &Verified{Transcript: t}
	logSigned := false
	for _, s := range n.Sigs {
		if s.Name == logKey.Name() && s.Hash == logKey.KeyHash() {
			logSigned = true
			continue
		}
		v.Cosigners = append(v.Cosigners, s.Name)
	}
	if !logSigned {
		return nil, fmt.Errorf("%w: no signature by the log key %s", ErrTranscript, logKey.Name())
	}
	if len(v.Cosigners) < minCosigners {
		return nil, fmt.Errorf("%w: %d officer co-signatures, want %d", ErrTranscript, len(v.Cosigners), minCosigners)
	}
	return v, nil
}
