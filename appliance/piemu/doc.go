// Package piemu emulates what a Raspberry Pi 4's EEPROM bootloader does on
// the network, so that tests can boot a "Pi" against real servers in a
// network namespace. This file set covers DHCP (dhcp.go); TFTP follows the
// same pattern.
//
// The DHCP half sends what a Pi 4 sends (see PI-NETBOOT.md §1.2): a DISCOVER
// from 0.0.0.0:68 to 255.255.255.255:67 with the broadcast flag clear,
// vendor class "PXEClient:Arch:00000:UNDI:002001", option 93 = 00 00,
// option 94 = 01 02 01, option 55 asking for 1, 3, 43, 60, 66, 67, 128-135,
// and option 97 = 00 "RPi4" board-revision MAC-low-4 serial. It collects
// offers until it holds one with "Raspberry Pi Boot" and one with an address
// (a proxyDHCP offer and the router's may come in any order, or one server
// sends both), resending the DISCOVER every 4 s as DHCP_REQ_TIMEOUT does; takes the TFTP server from the offer that carries
// "Raspberry Pi Boot" in option 43 (option 66, else option 54), and REQUESTs
// the address from the server that offered one, without option 60, as the
// 2020-01 bootloader did.
//
// It talks through an AF_PACKET socket (root or CAP_NET_RAW), like the real
// bootloader, which has no IP stack: a server that unicasts its OFFER to the
// not-yet-configured address is still heard.
package piemu
