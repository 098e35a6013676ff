package dhcpd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ociboot/ociboot/appliance/nodes"
)

// PXEOption43 is the vendor-encapsulated option dnsmasq sends for
// pxe-service=0,"Raspberry Pi Boot": discovery control 3 (no broadcast or
// multicast boot-server discovery), menu prompt {timeout 0, "PXE"} and one
// boot menu entry of type 0 whose text the Pi bootloader looks for. The Pi
// accepts exactly these bytes from dnsmasq, so we send the same ones rather
// than a shorter encoding that no Pi has been seen to accept.
var PXEOption43 = func() []byte {
	const menu = "Raspberry Pi Boot"
	b := []byte{
		6, 1, 3, // PXE_DISCOVERY_CONTROL
		10, 4, 0, 'P', 'X', 'E', // PXE_MENU_PROMPT
		9, byte(3 + len(menu)), 0, 0, byte(len(menu)), // PXE_BOOT_MENU
	}
	b = append(b, menu...)
	return append(b, 0xff)
}()

// PXEClass is the vendor class (option 60) in replies to PXE clients.
const PXEClass = "PXEClient"

// piOUIs are the MAC prefixes Raspberry Pi Ltd uses. The list goes stale as
// new ranges are assigned, so option 97 is the preferred signal.
var piOUIs = [][3]byte{
	{0xb8, 0x27, 0xeb},
	{0xdc, 0xa6, 0x32},
	{0xe4, 0x5f, 0x01},
	{0x28, 0xcd, 0xc1},
	{0xd8, 0x3a, 0xdd},
	{0x2c, 0xcf, 0x67},
}

// IsPiMAC reports whether mac carries a Raspberry Pi OUI.
func IsPiMAC(mac net.HardwareAddr) bool {
	if len(mac) < 3 {
		return false
	}
	for _, oui := range piOUIs {
		if bytes.Equal(mac[:3], oui[:]) {
			return true
		}
	}
	return false
}

// Client is what a request says about the machine that sent it.
type Client struct {
	MAC net.HardwareAddr
	// Netboot is set for clients that want boot options: PXE vendor class,
	// a Pi 4/5 GUID in option 97, or a Pi MAC with an option 97.
	Netboot bool
	// Model is "RPi4" or "RPi5" from option 97, "" if unknown.
	Model string
	// BoardRevision is the revision code from option 97 (e.g. 0xa03111).
	BoardRevision uint32
	// Serial is the low 32 bits of the Pi serial as 8 lowercase hex digits,
	// the bootloader's TFTP prefix; "" if the request does not carry it.
	Serial string
	// GUID is option 97 as received, echoed in replies.
	GUID []byte
	// IPXE is set when the client is the iPXE firmware (user class
	// "iPXE", option 77), which runs the script named in the boot file.
	IPXE bool
}

// IPXEScript is the boot file handed to iPXE clients that are not Pis.
// tftpd generates it: it chains to the node's own script under its MAC
// directory, which names the kernel and initrd of the node's image.
const IPXEScript = "boot.ipxe"

// ParseClient extracts the netboot identity of a request.
//
// Option 97 of a Pi 4/5 bootloader (2020-03 and later) is 17 bytes:
// 0x00, then four 32-bit words: the FourCC "RPi4"/"RPi5" (or "5iPR"), the board revision,
// the low 4 bytes of the MAC, the serial. The FourCC and the board revision
// are stored little-endian (0x34695052 appears as "RPi4"; revision 0xa03111
// as 11 31 a0 00 in a published dnsmasq log), the MAC bytes in wire order,
// and the serial little-endian: the same log shows a Pi whose TFTP prefix is
// 5b154510 sending 10 as the first serial byte. Older bootloaders (and
// DHCP_OPTION97=0) send the serial four times, also little-endian.
func ParseClient(m *dhcpv4.DHCPv4) Client {
	c := Client{MAC: m.ClientHWAddr}
	class := m.ClassIdentifier()
	guid := m.GetOneOption(dhcpv4.OptionClientMachineIdentifier)
	if len(guid) > 0 {
		c.GUID = append([]byte(nil), guid...)
	}
	if len(guid) == 17 && guid[0] == 0 {
		words := guid[1:]
		switch fourCC := string(words[:4]); fourCC {
		case "RPi4", "RPi5", "5iPR":
			// "5iPR" is RPi5 in the other byte order, as reported from
			// Pi 5 bootloaders; the other words have been seen only in
			// the order below, so only the FourCC is read both ways.
			c.Model = fourCC
			if fourCC == "5iPR" {
				c.Model = "RPi5"
			}
			c.BoardRevision = binary.LittleEndian.Uint32(words[4:8])
			c.Serial = fmt.Sprintf("%08x", binary.LittleEndian.Uint32(words[12:16]))
		default:
			// The legacy format repeats the serial four times. A PC's
			// PXE/iPXE option 97 is its SMBIOS UUID, which QEMU leaves all
			// zero, so only a Pi MAC with a non-zero serial counts.
			if IsPiMAC(c.MAC) && !isZero(words[0:4]) && bytes.Equal(words[0:4], words[4:8]) && bytes.Equal(words[0:4], words[8:12]) && bytes.Equal(words[0:4], words[12:16]) {
				c.Serial = fmt.Sprintf("%08x", binary.LittleEndian.Uint32(words[0:4]))
			}
		}
	}
	c.Netboot = strings.HasPrefix(class, PXEClass) || c.Model != "" || (IsPiMAC(c.MAC) && len(guid) > 0)
	// iPXE sends its user class as the bare string, not RFC 3004 encoded.
	c.IPXE = bytes.Contains(m.GetOneOption(dhcpv4.OptionUserClassInformation), []byte("iPXE"))
	return c
}

// NodeKey is the store name for a client: its serial, or, when the request
// carries none (a non-Pi PXE client, a Pi 3 without GUID), the MAC in the
// dash form the Pi bootloader uses for TFTP_PREFIX=2 ("dc-a6-32-01-02-03").
func (c Client) NodeKey() string {
	if c.Serial != "" {
		return c.Serial
	}
	return nodes.MACKey(c.MAC)
}
