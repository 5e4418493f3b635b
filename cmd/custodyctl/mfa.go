package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/skip2/go-qrcode"

	"custody/internal/api"
)

// mfaGroup is custodyctl mfa: enroll, confirm, list and revoke
// principals' TOTP factors.
func (c *cli) mfaGroup() *group {
	return &group{name: "mfa",
		summary: "Second factors (TOTP) of principals, kept on the HSM.",
		details: `A principal whose requests the policy makes need a second factor (its
"second_factor" section) sends its authenticator's current code with
custodyctl --totp (prompted on the terminal) or --totp-stdin; never as an
argument. An admin enrolls a principal (usable at once), or a principal
enrolls itself with --self and another admin confirms it.`,
		subs: []*command{{name: "mfa enroll", args: "PRINCIPAL | --self", maxArgs: 1,
			summary: "Create a TOTP seed on the HSM; show it once as an otpauth:// URI and a QR code.",
			details: `With PRINCIPAL (admin role): the factor is usable at once. With --self (any
principal): your own factor, pending until another admin runs
custodyctl mfa confirm YOU --enrollment ID with the id printed here; tell them
the id yourself (in person, by phone), so that they confirm your enrollment and
no other. The URI and the QR code hold the seed: scan the code or enter the URI
into your authenticator app now; they are not shown again and never stored. The
QR code is drawn for a dark terminal background (light modules are full blocks).`,
			setup: func(fs *flag.FlagSet) func([]string) error {
				self := fs.Bool("self", false, "enroll yourself (pending until another admin confirms)")
				return func(pos []string) error {
					switch {
					case *self && len(pos) == 0:
						return c.mfaSelfEnroll()
					case !*self && len(pos) == 1:
						return c.mfaEnroll(pos[0])
					}
					return usageError{msg: "mfa enroll: give PRINCIPAL (admin) or --self, not both", hint: "see custodyctl mfa enroll --help"}
				}
			},
		}, {name: "mfa confirm", args: "PRINCIPAL", minArgs: 1, maxArgs: 1,
			summary: "Confirm PRINCIPAL's self-enrollment (admin; not your own).",
			setup: func(fs *flag.FlagSet) func([]string) error {
				id := fs.String("enrollment", "", "the enrollment `id` (XXXX-XXXX) the principal gave you")
				return func(pos []string) error {
					if *id == "" {
						return flagsRequired("mfa confirm", "--enrollment is required: the id the principal's enroll --self printed")
					}
					return c.mfaConfirm(pos[0], strings.ToUpper(strings.TrimSpace(*id)))
				}
			},
		}, {name: "mfa list", maxArgs: 0,
			summary: "Who has a second factor, active or pending (admin); never the seeds.",
			setup:   noFlags(func([]string) error { return c.mfaList() }),
		}, {name: "mfa revoke", args: "PRINCIPAL", minArgs: 1, maxArgs: 1,
			summary: "Destroy PRINCIPAL's seed, active or pending (admin); enroll again for a new one.",
			setup:   noFlags(func(pos []string) error { return c.mfaRevoke(pos[0]) }),
		}}}
}

func (c *cli) mfaEnroll(principal string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.MFAEnroll(ctx, principal)
	if err != nil {
		return err
	}
	return c.showSeed(r, fmt.Sprintf("second factor of %s created on the HSM, usable now.", r.Principal))
}

func (c *cli) mfaSelfEnroll() error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.MFASelfEnroll(ctx)
	if err != nil {
		return err
	}
	return c.showSeed(r, fmt.Sprintf("your second factor (%s) created on the HSM: pending. Enrollment id: %s\n"+
		"Give this id to an admin yourself; it is usable once they run:\n  custodyctl mfa confirm %s --enrollment %s",
		r.Principal, r.Enrollment, r.Principal, r.Enrollment))
}

// showSeed prints an enrollment's answer: what happened, the URI and its
// QR code (--json: the answer as it is).
func (c *cli) showSeed(r *api.MFAEnrolled, head string) error {
	qr, qerr := qrText(r.URI)
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "%s\nAdd it to the authenticator app now; this is the only time it is shown\n"+
			"(it holds the seed: do not store or send it):\n\n  %s\n\n", head, r.URI)
		if qerr != nil {
			fmt.Fprintf(w, "(no QR code: %v; enter the URI by hand)\n", qerr)
			return
		}
		io.WriteString(w, qr)
	})
}

// qrText is uri as a QR code (error correction M) for a terminal: two
// module rows per line in half blocks, light modules drawn (a dark
// background shows the code the right way round), with the standard
// four-module quiet zone.
func qrText(uri string) (string, error) {
	q, err := qrcode.New(uri, qrcode.Medium)
	if err != nil {
		return "", err
	}
	bm := q.Bitmap() // true: dark, quiet zone included
	var b strings.Builder
	for y := 0; y < len(bm); y += 2 {
		for x := range bm[y] {
			top := !bm[y][x]
			bottom := y+1 >= len(bm) || !bm[y+1][x] // past the last row: quiet zone
			switch {
			case top && bottom:
				b.WriteRune('█')
			case top:
				b.WriteRune('▀')
			case bottom:
				b.WriteRune('▄')
			default:
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String(), nil
}

func (c *cli) mfaConfirm(principal, id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.MFAConfirm(ctx, principal, id)
	if err != nil {
		return err
	}
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "second factor of %s (enrollment %s) confirmed by %s: usable now\n", r.Principal, r.Enrollment, r.ConfirmedBy)
	})
}

func (c *cli) mfaList() error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.MFAList(ctx)
	if err != nil {
		return err
	}
	return c.answer(r, func(w io.Writer) {
		if len(r.Enrollments) == 0 {
			fmt.Fprintln(w, "no principal has a second factor")
			return
		}
		for _, e := range r.Enrollments {
			line := fmt.Sprintf("%-24s %s", e.Principal, e.State)
			if e.Enrollment != "" {
				line += " (enrollment " + e.Enrollment + ", waiting for an admin's confirmation)"
			}
			fmt.Fprintln(w, line)
		}
	})
}

func (c *cli) mfaRevoke(principal string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if err := c.d.MFARevoke(ctx, principal); err != nil {
		return err
	}
	return c.answer(map[string]any{"principal": principal, "revoked": true}, func(w io.Writer) {
		fmt.Fprintf(w, "second factor of %s revoked\n", principal)
	})
}

var totpRe = regexp.MustCompile(`^[0-9]{6}$`)

// readTOTP reads the second factor's code: from the terminal (/dev/tty,
// with a prompt on it) when tty, else from the first line of stdin, read
// byte by byte so that the rest of stdin is left for the request. It sets
// c.totp and returns the stdin to use from then on.
func (c *cli) readTOTP(tty bool, stdin io.Reader, stderr io.Writer) (io.Reader, error) {
	var line string
	if tty {
		f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			return stdin, fmt.Errorf("--totp: no terminal to prompt on (%v); use --totp-stdin", err)
		}
		defer f.Close()
		fmt.Fprint(f, "second factor code: ")
		if line, err = bufio.NewReader(f).ReadString('\n'); err != nil && !errors.Is(err, io.EOF) {
			return stdin, err
		}
	} else {
		var b [1]byte
		var sb strings.Builder
		for sb.Len() < 64 {
			n, err := stdin.Read(b[:])
			if n == 1 {
				if b[0] == '\n' {
					break
				}
				sb.WriteByte(b[0])
			}
			if err != nil {
				break
			}
		}
		line = sb.String()
	}
	line = strings.TrimSpace(line)
	if !totpRe.MatchString(line) {
		return stdin, usageError{msg: "the second factor's code is 6 digits"}
	}
	c.totp = line
	return stdin, nil
}
