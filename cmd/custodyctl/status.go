package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"custody/internal/api"
	"custody/internal/compliance"
)

// setFlags collects repeated --set KEY=VALUE.
type setFlags []string

func (s *setFlags) String() string     { return strings.Join(*s, " ") }
func (s *setFlags) Set(v string) error { *s = append(*s, v); return nil }

// statusFlags are the flags of participants status.
type statusFlags struct {
	set               setFlags
	file              *string
	suspend           *string
	lift              *bool
	reason, reference *string
	version           *int
}

func (c *cli) statusCommand(stdin io.Reader) *command {
	return &command{name: "participants status", args: "ID", minArgs: 1, maxArgs: 1,
		summary: "Show or change ID's compliance status (compliance role).",
		details: `Without changes, shows the record Vault holds and its version. A change
replaces the whole record with check-and-set on the version read (or
--version N, the one you reviewed), so a reviewer never overwrites another's
change unseen; it needs --reason and --reference, which the access log keeps.

Change the record read from the daemon with --set (repeatable):
  kyc=verified:2027-06-30   kyc=pending   kyc=expired   kyc=   (remove)
  kyb=…                     (as kyc)
  sanctions=clear           sanctions=hit                sanctions=   (not screened)
  approval=CH:FINMA-2026-114:2027-12-31                  approval=    (remove)
  flags=pep,high-risk       flags=                       (replace the list)
or --suspend REASON / --lift-suspension; or give the whole record with
--file FILE (or - for stdin), as docs/compliance.md describes. Dates are
YYYY-MM-DD (midnight UTC) or RFC 3339.`,
		setup: func(fs *flag.FlagSet) func([]string) error {
			f := statusFlags{
				file:      fs.String("file", "", "`file` holding the whole new record (JSON; - for stdin)"),
				suspend:   fs.String("suspend", "", "suspend the participant, for this `reason` (not shown to applications)"),
				lift:      fs.Bool("lift-suspension", false, "lift the participant's suspension"),
				reason:    fs.String("reason", "", "why you change it (`text`, in the access log)"),
				reference: fs.String("reference", "", "your case or document `reference` (in the access log)"),
				version:   fs.Int("version", -1, "change only if the current version is `N` (default: the version just read)"),
			}
			fs.Var(&f.set, "set", "change one `key=value` of the record (repeatable; see above)")
			return func(pos []string) error { return c.participantStatus(pos[0], stdin, f) }
		}}
}

func (f statusFlags) changes() bool {
	return len(f.set) > 0 || *f.file != "" || *f.suspend != "" || *f.lift
}

func (c *cli) participantStatus(id string, stdin io.Reader, f statusFlags) error {
	ctx, cancel := c.ctx()
	defer cancel()
	cur, err := c.d.ParticipantStatus(ctx, id)
	if err != nil {
		return err
	}
	if !f.changes() {
		if *f.reason != "" || *f.reference != "" || *f.version >= 0 {
			return usageError{msg: "participants status: --reason, --reference and --version go with a change (--set, --file, --suspend, --lift-suspension)"}
		}
		return c.answer(cur, func(w io.Writer) { printStatus(w, cur) })
	}
	if *f.reason == "" || *f.reference == "" {
		return usageError{msg: "participants status: a change needs --reason and --reference", hint: "see custodyctl participants status --help"}
	}
	if *f.file != "" && (len(f.set) > 0 || *f.suspend != "" || *f.lift) {
		return usageError{msg: "participants status: --file gives the whole record; do not combine it with --set, --suspend or --lift-suspension"}
	}
	if *f.suspend != "" && *f.lift {
		return usageError{msg: "participants status: --suspend and --lift-suspension exclude each other"}
	}
	version := cur.Version
	if *f.version >= 0 {
		if *f.version != cur.Version {
			return &api.Error{Code: api.CodeStatusConflict, Message: fmt.Sprintf("participant %s is at version %d, not %d (--version): review it again", id, cur.Version, *f.version)}
		}
	}
	var rec compliance.Record
	if *f.file != "" {
		var args []string
		if *f.file != "-" {
			args = []string{*f.file}
		}
		raw, err := readInput(args, stdin)
		if err != nil {
			return err
		}
		if rec, err = compliance.ParseRecord(raw); err != nil {
			return usageError{msg: fmt.Sprintf("participants status --file: %v", err)}
		}
	} else {
		if cur.Invalid == "" && len(cur.Status) > 0 {
			if rec, err = compliance.ParseRecord(cur.Status); err != nil {
				return fmt.Errorf("the daemon's record does not parse: %v", err)
			}
		}
		for _, kv := range f.set {
			if err := applySet(&rec, kv); err != nil {
				return usageError{msg: "participants status --set " + kv + ": " + err.Error(), hint: "see custodyctl participants status --help"}
			}
		}
		switch {
		case *f.suspend != "":
			rec.Suspended, rec.SuspendedReason = true, *f.suspend
		case *f.lift:
			rec.Suspended, rec.SuspendedReason = false, ""
		}
		if err := rec.Validate(); err != nil {
			return usageError{msg: "participants status: " + err.Error()}
		}
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	res, err := c.d.SetParticipantStatus(ctx, id, api.StatusChange{Version: version, Status: raw, Reason: *f.reason, Reference: *f.reference})
	if err != nil {
		return err
	}
	return c.answer(res, func(w io.Writer) {
		fmt.Fprintf(w, "participant %s: status version %d (was %d)\n", res.ID, res.Version, res.PreviousVersion)
	})
}

// applySet applies one --set key=value to r.
func applySet(r *compliance.Record, kv string) error {
	key, val, ok := strings.Cut(kv, "=")
	if !ok {
		return errors.New("want key=value")
	}
	switch key {
	case "kyc", "kyb":
		var v *compliance.Verification
		if val != "" {
			state, date, hasDate := strings.Cut(val, ":")
			v = &compliance.Verification{State: state}
			if hasDate {
				t, err := parseDate(date)
				if err != nil {
					return err
				}
				v.Expires = &t
			}
		}
		if key == "kyc" {
			r.KYC = v
		} else {
			r.KYB = v
		}
	case "sanctions":
		r.Sanctions = val
	case "approval":
		if val == "" {
			r.RegulatoryApproval = nil
			return nil
		}
		parts := strings.SplitN(val, ":", 3)
		if len(parts) != 3 {
			return errors.New("want approval=JURISDICTION:REFERENCE:EXPIRY")
		}
		t, err := parseDate(parts[2])
		if err != nil {
			return err
		}
		r.RegulatoryApproval = &compliance.Approval{Jurisdiction: parts[0], Reference: parts[1], Expires: t}
	case "flags":
		r.Flags = nil
		if val != "" {
			r.Flags = strings.Split(val, ",")
		}
	default:
		return fmt.Errorf("unknown key %q (kyc, kyb, sanctions, approval, flags; --suspend and --lift-suspension for suspension)", key)
	}
	return nil
}

func parseDate(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a date (YYYY-MM-DD or RFC 3339)", s)
}

func printStatus(w io.Writer, st *api.ParticipantStatus) {
	if st.Invalid != "" {
		fmt.Fprintf(w, "%s: status version %d is REFUSED (every check fails closed): %q\n", st.ID, st.Version, st.Invalid)
		return
	}
	if st.Version == 0 || len(st.Status) == 0 {
		fmt.Fprintf(w, "%s: no status record (version 0): it meets no requirement, and is not suspended\n", st.ID)
		return
	}
	rec, err := compliance.ParseRecord(st.Status)
	if err != nil {
		fmt.Fprintf(w, "%s: status version %d does not parse here: %q\n", st.ID, st.Version, err.Error())
		return
	}
	fmt.Fprintf(w, "%s: status version %d, set %s by %s\n  reason:     %q\n  reference:  %q\n", st.ID, st.Version, stamp(*st.Updated), st.By, st.Reason, st.Reference)
	check := func(v *compliance.Verification) string {
		switch {
		case v == nil:
			return "-"
		case v.Expires != nil:
			return v.State + ", expires " + v.Expires.UTC().Format(time.RFC3339)
		}
		return v.State
	}
	fmt.Fprintf(w, "  kyc:        %s\n  kyb:        %s\n", check(rec.KYC), check(rec.KYB))
	if a := rec.RegulatoryApproval; a != nil {
		fmt.Fprintf(w, "  approval:   %s %q, expires %s\n", a.Jurisdiction, a.Reference, a.Expires.UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintf(w, "  approval:   -\n")
	}
	sanctions := rec.Sanctions
	if sanctions == "" {
		sanctions = "not screened"
	}
	fmt.Fprintf(w, "  sanctions:  %s\n", sanctions)
	if rec.Suspended {
		fmt.Fprintf(w, "  suspended:  yes: %q\n", rec.SuspendedReason)
	} else {
		fmt.Fprintf(w, "  suspended:  no\n")
	}
	if len(rec.Flags) > 0 {
		fmt.Fprintf(w, "  flags:      %s\n", strings.Join(rec.Flags, ", "))
	}
}
