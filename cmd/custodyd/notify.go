package main

import (
	"net"
	"os"
)

// notify sends a state line ("READY=1", "RELOADING=1", "STOPPING=1") to the
// service manager when custodyd runs under systemd with Type=notify
// (sd_notify(3): a datagram to $NOTIFY_SOCKET; a leading '@' names an
// abstract socket). Without NOTIFY_SOCKET it does nothing. Failures are
// ignored: notification is advisory.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}
