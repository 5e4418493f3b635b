package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"custody/internal/api"
	"custody/internal/ceremony"
	"custody/internal/durable"
)

// ceremonyGroup is custodyctl ceremony: the escrow key ceremonies.
func (c *cli) ceremonyGroup(stdin io.Reader) *group {
	execute := func(kind string) func(*flag.FlagSet) func([]string) error {
		return noFlags(func(pos []string) error { return c.ceremonyExecute(kind, pos) })
	}
	return &group{name: "ceremony",
		summary: "Escrow key ceremonies (role officer, and your Unix user in the daemon's officers file; docs/ceremonies.md).",
		details: `A ceremony step is a request that M other officers approve, each as their own Unix user,
within its window; then any officer executes it, once.`,
		subs: []*command{{name: "ceremony request", args: "KIND", minArgs: 1, maxArgs: 1,
			summary: "Open a request; KIND is genesis, backup, restore, rotate or retire.",
			details: `--m: approvals needed (and, for backup, the shares needed to restore; the
daemon's floor per kind, never below 2 for restore and retire); --n: backup shares
to make, one per officer in file order (default: every officer); --window: how long
approvals are accepted (default 1h, 1m to 24h); --manifest: restore only, the
backup's signed manifest.json (a restore accepts only manifests signed by a daemon
pinned in ceremony.trusted_backup_signers). --param: backup key_label=custody/escrow/vN;
retire version=V and rewrapped_count=N; nothing else. The daemon writes the rest:
the token, the key's label and fingerprint (hex and words) and the effect in words.
Prints the id, the SHA-256 to approve and the request text.`,
			setup: c.ceremonyRequest,
		}, {name: "ceremony show", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Print a pending request's text, its SHA-256 and who approved it.",
			setup: noFlags(func(pos []string) error {
				ctx, cancel := c.ctx()
				defer cancel()
				return c.printRequest(c.d.CeremonyShow(ctx, pos[0]))
			}),
		}, {name: "ceremony approve", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Approve request ID (--hash is required).",
			details: `The hash is the SHA-256 you read and checked (custodyctl ceremony show ID); a request
whose hash differs is refused (request_mismatch), so is your own (self_approval)
and one whose window closed (request_expired).`,
			setup: c.ceremonyApprove,
		}, {name: "ceremony status", maxArgs: 0,
			summary: "Whether genesis ran, the escrow key versions and the pending requests.",
			details: `The escrow key versions are listed with their state: active, decrypt-only or
destroyed.`,
			setup: noFlags(func([]string) error { return c.ceremonyStatus() }),
		}, {name: "ceremony genesis", args: "[ID]", maxArgs: 1,
			summary: "Execute an approved genesis request.",
			details: `ID may be left out when exactly one genesis request is pending. Creates the
escrow, envelope-signing and access-log keys on the device unless they exist and
prints each public key's SHA-256 as hex and as words to read aloud. Until genesis
ran, audit decrypts are refused.`,
			setup: execute(ceremony.KindGenesis),
		}, {name: "ceremony backup", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Execute an approved backup once the SO PIN shares it needs are in.",
			details: `The daemon holds no SO PIN: each holder decrypts their so-pin-share file from
token init and submits it with share submit. The escrow key is wrapped on the
device under a fresh KEK, the KEK split M-of-N, each share age-encrypted to one
officer, the manifest signed by the daemon's log key. Prints the files written
(mode 0600 in the daemon's output directory) and their SHA-256s; fetch yours
with custodyctl ceremony fetch.`,
			setup: execute(ceremony.KindBackup),
		}, {name: "ceremony restore", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Execute an approved restore once M shares are in.",
			details: `The daemon combines the shares, checks the key check value, unwraps the escrow
key into its token and opens the backup's canary envelope with it.`,
			setup: execute(ceremony.KindRestore),
		}, {name: "ceremony rotate", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Execute an approved rotation: a new escrow key version for new envelopes.",
			details: `The older versions stay for decryption until envelopes are rewrapped.`,
			setup:   execute(ceremony.KindRotate),
		}, {name: "ceremony retire", args: "ID", minArgs: 1, maxArgs: 1,
			summary: "Execute an approved retirement: destroy an older escrow key version, for good.",
			details: `Request it with --param version=V --param rewrapped_count=N, N from your last
custodyctl rewrap run: envelopes still holding only a stanza for version V can
never be audit-decrypted again.`,
			setup: execute(ceremony.KindRetire),
		}, {name: "ceremony fetch", args: "ID NAME", minArgs: 2, maxArgs: 2,
			summary: "Fetch an output of executed request ID.",
			details: `manifest.json and transcript.txt for any officer, a share file only for the
officer who holds it. Written to --out (mode 0600, never replacing a file) or ./NAME.`,
			setup: c.ceremonyFetch,
		}, {name: "ceremony cosign", args: "TRANSCRIPT", minArgs: 1, maxArgs: 1,
			summary: "Offline: add your signature to a signed transcript (--key is required).",
			details: `The key is a note signer key, "PRIVATE+KEY+name+…", in FILE. Rewrites
TRANSCRIPT unless --out is given.`,
			setup: c.cosign,
		}, {name: "ceremony verify", args: "TRANSCRIPT", minArgs: 1, maxArgs: 1,
			summary: "Offline: check a transcript's signatures (--officers is required).",
			details: `Checks the daemon's signature (the access log's key: your own copy with
--log-key, else the key you pinned with custodyctl log pin; never a log
directory's log.pub) and every officer co-signature (the officers file); by
default every approver named in the transcript must have co-signed.`,
			setup: c.verifyTranscript,
		}},
		groups: []*group{{name: "ceremony share",
			summary: "Decrypt your share file, or submit a decrypted share.",
			subs: []*command{{name: "ceremony share decrypt", args: "FILE", minArgs: 1, maxArgs: 1,
				summary: "Offline: decrypt your own share file with your age identity (--identity is required).",
				details: `FILE is a backup share, or an SO PIN share from custodyd token init. The share
is secret: it goes to --out (created with mode 0600) or stdout.`,
				setup: c.shareDecrypt,
			}, {name: "ceremony share submit", args: "ID FILE|-", minArgs: 2, maxArgs: 2,
				summary: "Submit your decrypted share (FILE, or - for stdin) to request ID.",
				details: `An SO PIN share goes to a backup request, a backup share to a restore request.
It must be your own share; a share of another set, a corrupted one or one already
in is refused and named.`,
				setup: noFlags(func(pos []string) error { return c.shareSubmit(pos, stdin) }),
			}}}},
	}
}

// printRequest prints request v, or returns err.
func (c *cli) printRequest(v *api.CeremonyRequest, err error) error {
	if err != nil {
		return err
	}
	return c.answer(v, func(w io.Writer) {
		fmt.Fprintf(w, "request %s (%s), %d of %d approvals%s, open until %s\nsha256 %s\n\n%s", v.ID, v.Kind,
			len(v.Approvals), v.Quorum, listed(v.Approvals), stamp(v.NotAfter), v.Hash, v.Canonical)
		if v.ShareKind != "" {
			fmt.Fprintf(w, "\n%ss submitted: %d of %d\n", v.ShareKind, v.Shares, v.Needed)
		}
	})
}

func listed(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

type paramFlags map[string]string

func (p paramFlags) String() string { return "" }
func (p paramFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("--param %q: want key=value", s)
	}
	p[k] = v
	return nil
}

func (c *cli) ceremonyRequest(fs *flag.FlagSet) func(pos []string) error {
	m := fs.Int("m", 2, "approvals needed (and shares needed to restore a backup); the daemon's floor per kind, never below 2 for restore and retire")
	n := fs.Int("n", 0, "backup: shares to make, one per officer in file order (0 = every officer)")
	window := fs.String("window", "", "approval window, a `duration` from 1m to 24h (default 1h)")
	manifest := fs.String("manifest", "", "restore: the backup's signed manifest.json `file` (required for restore)")
	params := paramFlags{}
	fs.Var(params, "param", "extra parameter `key=value` (repeatable)")
	return func(pos []string) error {
		in := api.CeremonyRequestInput{Kind: pos[0], M: *m, N: *n, Window: *window, Params: params}
		if *manifest != "" {
			b, err := os.ReadFile(*manifest)
			if err != nil {
				return err
			}
			in.Manifest = string(b)
		} else if pos[0] == ceremony.KindRestore {
			return usageError{msg: "ceremony request restore needs --manifest FILE (the backup's manifest.json)"}
		}
		ctx, cancel := c.ctx()
		defer cancel()
		return c.printRequest(c.d.CeremonyRequest(ctx, in))
	}

}

func (c *cli) ceremonyApprove(fs *flag.FlagSet) func(pos []string) error {
	hash := fs.String("hash", "", "the request's SHA-256 `hash`, as you read it (required)")
	return func(pos []string) error {
		if *hash == "" {
			return flagsRequired("ceremony approve", "--hash is required")
		}
		ctx, cancel := c.ctx()
		defer cancel()
		cur, err := c.d.CeremonyShow(ctx, pos[0])
		if err != nil {
			return err
		}
		v, err := c.d.CeremonyApprove(ctx, pos[0], api.Approval{Hash: strings.ToLower(strings.TrimSpace(*hash)), Nonce: cur.Nonce})
		if err != nil {
			return err
		}
		return c.answer(v, func(w io.Writer) {
			fmt.Fprintf(w, "approved request %s (%s): %d of %d approvals%s\n", v.ID, v.Kind, len(v.Approvals), v.Quorum, listed(v.Approvals))
		})
	}

}

func (c *cli) ceremonyStatus() error {
	ctx, cancel := c.ctx()
	defer cancel()
	st, err := c.d.CeremonyStatus(ctx)
	if err != nil {
		return err
	}
	return c.answer(st, func(w io.Writer) {
		fmt.Fprintf(w, "you are officer %s\ngenesis: %v\n", st.Officer, st.Genesis)
		if p := st.SOPIN; p != nil {
			fmt.Fprintf(w, "SO PIN: split %d-of-%d among %s (set %s); a backup needs %d SO PIN shares\n",
				p.Threshold, len(p.Holders), strings.Join(p.Holders, ", "), p.Set, p.Threshold)
		} else {
			fmt.Fprintf(w, "SO PIN: not split among the officers; backups are refused\n")
		}
		fmt.Fprintf(w, "escrow key versions:\n")
		for _, v := range st.EscrowVersions {
			fmt.Fprintf(w, "  v%d  %-12s %s  sha256 %s\n", v.Version, v.State, v.Label, v.Fingerprint)
		}
		fmt.Fprintf(w, "pending requests: %d\n", len(st.Pending))
		for _, p := range st.Pending {
			fmt.Fprintf(w, "  %s  %-8s by %s, %d of %d approvals%s, until %s\n", p.ID, p.Kind, p.Requester, len(p.Approvals), p.Quorum, listed(p.Approvals), stamp(p.NotAfter))
		}
	})
}

func (c *cli) ceremonyExecute(kind string, args []string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	var id string
	if len(args) == 1 {
		id = args[0]
	} else { // genesis without an id: the one pending genesis request
		st, err := c.d.CeremonyStatus(ctx)
		if err != nil {
			return err
		}
		for _, p := range st.Pending {
			if p.Kind == ceremony.KindGenesis {
				if id != "" {
					return usageError{msg: "several genesis requests are pending; name one: custodyctl ceremony genesis ID"}
				}
				id = p.ID
			}
		}
		if id == "" {
			return errors.New("no genesis request is pending: custodyctl ceremony request genesis, then have it approved")
		}
	}
	out, err := c.d.CeremonyExecute(ctx, kind, id)
	if err != nil {
		return err
	}
	return c.answer(out, func(w io.Writer) {
		fmt.Fprintf(w, "%s done (request %s)\n", kind, out.Request)
		for _, f := range out.Fingerprints {
			state := "existing"
			if f.Created {
				state = "new"
			}
			fmt.Fprintf(w, "key %s (%s)\n  sha256 %s\n  words  %s\n", f.Label, state, f.SHA256, f.Words)
		}
		if out.BackupID != "" {
			fmt.Fprintf(w, "backup %s\n", out.BackupID)
		}
		if out.KCV != "" {
			fmt.Fprintf(w, "key check value %s\n", out.KCV)
		}
		for _, o := range out.Outputs {
			who := "any officer"
			if o.Holder != "" {
				who = o.Holder + " only"
			}
			fmt.Fprintf(w, "wrote %s (custodyctl ceremony fetch %s %s: %s)\n  sha256 %s\n", o.Path, out.Request, o.Name, who, o.SHA256)
		}
		fmt.Fprintf(w, "transcript %s\n  sha256 %s\n", out.Transcript.Path, out.Transcript.SHA256)
	})
}

func (c *cli) ceremonyFetch(fs *flag.FlagSet) func(pos []string) error {
	outFile := fs.String("out", "", "write the output to this `file` (mode 0600, never replaced) instead of ./NAME")
	return func(pos []string) error {
		ctx, cancel := c.ctx()
		defer cancel()
		out, err := c.d.CeremonyFetch(ctx, pos[0], pos[1])
		if err != nil {
			return err
		}
		dst := *outFile
		if dst == "" {
			dst = filepath.Base(out.Name)
		}
		if err := durable.Create(dst, out.Data, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "wrote %s (%d bytes)\n  sha256 %s\n", dst, len(out.Data), out.SHA256)
		return nil
	}

}

func (c *cli) shareDecrypt(fs *flag.FlagSet) func(pos []string) error {
	idFile := fs.String("identity", "", "your age identity `file` (AGE-SECRET-KEY-1…; required)")
	outFile := fs.String("out", "", "write the share to this `file` (created with mode 0600) instead of stdout")
	return func(pos []string) error {
		if *idFile == "" {
			return flagsRequired("ceremony share decrypt", "--identity is required")
		}
		f, err := os.Open(*idFile)
		if err != nil {
			return err
		}
		ids, err := age.ParseIdentities(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("--identity %s: %w", *idFile, err)
		}
		var id *age.X25519Identity
		for _, i := range ids {
			if x, ok := i.(*age.X25519Identity); ok {
				id = x
				break
			}
		}
		if id == nil {
			return fmt.Errorf("--identity %s: no X25519 identity", *idFile)
		}
		data, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		s, err := ceremony.DecryptShare(data, id)
		if err != nil {
			return err
		}
		text := s.Text()
		defer clear(text)
		clear(s.Value)
		if *outFile == "" {
			_, err = c.out.Write(text)
			return err
		}
		return durable.Create(*outFile, text, 0o600)
	}

}

func (c *cli) shareSubmit(args []string, stdin io.Reader) error {
	var text []byte
	var err error
	if args[1] == "-" {
		text, err = io.ReadAll(io.LimitReader(stdin, 4096))
	} else {
		text, err = os.ReadFile(args[1])
	}
	if err != nil {
		return err
	}
	defer clear(text)
	ctx, cancel := c.ctx()
	defer cancel()
	out, err := c.d.CeremonyShare(ctx, args[0], text)
	if err != nil {
		return err
	}
	return c.answer(out, func(w io.Writer) {
		fmt.Fprintf(w, "share accepted: %d of %d shares in for request %s\n", out.Shares, out.Threshold, args[0])
	})
}

func (c *cli) cosign(fs *flag.FlagSet) func(pos []string) error {
	keyFile := fs.String("key", "", "`file` with your note signer key (required)")
	outFile := fs.String("out", "", "write the co-signed transcript to this `file` (default: rewrite TRANSCRIPT)")
	return func(pos []string) error {
		if *keyFile == "" {
			return flagsRequired("ceremony cosign", "--key is required")
		}
		kb, err := os.ReadFile(*keyFile)
		if err != nil {
			return err
		}
		signer, err := note.NewSigner(strings.TrimSpace(string(kb)))
		clear(kb)
		if err != nil {
			return fmt.Errorf("--key %s: not a note signer key: %w", *keyFile, err)
		}
		signed, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		out, err := ceremony.Cosign(signed, signer)
		if err != nil {
			return err
		}
		dst := *outFile
		if dst == "" {
			dst = pos[0]
		}
		if err := durable.Replace(dst, out, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "co-signed by %s: %s\n", signer.Name(), dst)
		return nil
	}

}

func (c *cli) verifyTranscript(fs *flag.FlagSet) func(pos []string) error {
	offFile := fs.String("officers", "", "the officers `file` (required)")
	logKey := fs.String("log-key", "", "`file` with your own copy of the access log's verifier key; default: the keys you pinned (custodyctl log pin)")
	minCo := fs.Int("min-cosigners", -1, "officer co-signatures required; -1: every approver in the transcript")
	return func(pos []string) error {
		if *offFile == "" {
			return flagsRequired("ceremony verify", "--officers is required")
		}
		od, err := os.ReadFile(*offFile)
		if err != nil {
			return err
		}
		// Offline: the officers' Unix users need not exist here.
		offs, err := ceremony.ParseOfficers(od, func(string) (uint32, error) { return 0, nil })
		if err != nil {
			return err
		}
		var logKeys []note.Verifier
		if *logKey != "" {
			lk, err := os.ReadFile(*logKey)
			if err != nil {
				return err
			}
			lv, err := note.NewVerifier(strings.TrimSpace(string(lk)))
			if err != nil {
				return fmt.Errorf("--log-key %s: not a note verifier key: %w", *logKey, err)
			}
			logKeys = append(logKeys, lv)
		} else {
			path, pinned, _, err := loadReviewerConfig()
			if err != nil {
				return err
			}
			for _, k := range pinned {
				logKeys = append(logKeys, k)
			}
			if len(logKeys) == 0 {
				return fmt.Errorf("ceremony verify: %w in %s: pin the access log's key (custodyctl log pin KEYFILE --fingerprint SHA256, the fingerprint genesis printed) or pass --log-key FILE", errNotPinned, path)
			}
		}
		signed, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		// The transcript must carry the signature of one of the keys the
		// reviewer holds; with several pinned, the first that verifies.
		var v *ceremony.Verified
		var lv note.Verifier
		for _, k := range logKeys {
			if v, err = ceremony.VerifyTranscript(signed, k, offs.Verifiers(), max(*minCo, 0)); err == nil {
				lv = k
				break
			}
		}
		if err != nil {
			return err
		}
		if *minCo < 0 {
			for _, p := range v.Transcript.Participants {
				if p[1] == "approver" && !contains(v.Cosigners, p[0]) {
					return fmt.Errorf("%w: approver %s has not co-signed", ceremony.ErrTranscript, p[0])
				}
			}
		}
		t := v.Transcript
		fmt.Fprintf(c.out, "%s: transcript verifies\n  %s ceremony, request %s, %s\n  token %s (%s)\n  signed by the log key %s and co-signed by %s\n",
			filepath.Base(pos[0]), t.Kind, t.RequestID, t.Time.Format("2006-01-02 15:04:05 UTC"), t.TokenLabel, t.TokenSerial, lv.Name(), strings.Join(v.Cosigners, ", "))
		for _, f := range t.Fingerprints {
			fmt.Fprintf(c.out, "  key %s sha256 %s\n", f[0], f[1])
		}
		for _, o := range t.Outputs {
			fmt.Fprintf(c.out, "  file %s sha256 %s\n", o[0], o[1])
		}
		if t.KCV != "" {
			fmt.Fprintf(c.out, "  key check value %s\n", t.KCV)
		}
		for _, d := range t.Deviations {
			fmt.Fprintf(c.out, "  deviation: %s\n", d)
		}
		return nil
	}

}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
