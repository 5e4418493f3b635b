package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// mfaGroup is custodyctl mfa: enroll and revoke principals' TOTP factors.
func (c *cli) mfaGroup() *group {
	return &group{name: "mfa",
		summary: "Second factors (TOTP) of principals, kept on the HSM (admin role).",
		details: `A principal whose requests the policy makes need a second factor (its
"second_factor" section) sends its authenticator's current code with
custodyctl --totp (prompted on the terminal) or --totp-stdin; never as an
argument.`,
		subs: []*command{{name: "mfa enroll", args: "PRINCIPAL", minArgs: 1, maxArgs: 1,
			summary: "Create PRINCIPAL's TOTP seed on the HSM and show it once as an otpauth:// URI.",
			setup:   noFlags(func(pos []string) error { return c.mfaEnroll(pos[0]) }),
		}, {name: "mfa revoke", args: "PRINCIPAL", minArgs: 1, maxArgs: 1,
			summary: "Destroy PRINCIPAL's seed; enroll again for a new one.",
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
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "second factor of %s created on the HSM. Add it to the principal's authenticator app now;\n"+
			"this is the only time it is shown (it holds the seed: do not store or send it):\n\n  %s\n\n"+
			"(the terminal QR code of issue 15 is not implemented yet: enter the URI or its secret= by hand)\n", r.Principal, r.URI)
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
