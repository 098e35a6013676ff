/*
 * nfspower: the libnfs client of tests/powerloss. It uses libnfs's
 * synchronous API, as a simple tool would, and prints one line for every
 * reply it got, so the test knows what the server acknowledged before the
 * power cut.
 *
 *   nfspower write URL    until an error: create f<i>.tmp, write it,
 *                         COMMIT (fsync), rename it to f<i>, print
 *                         "ACK file <i>"; write block <i> of "log" and
 *                         COMMIT it, print "ACK log <i>"
 *   nfspower check URL F L
 *                         f0..f<F-1> and log blocks 0..L-1 hold what
 *                         write wrote; prints "OK files=.. blocks=.." or
 *                         "BAD ..." lines and exits 1
 *
 * URL is nfs://host/export?version=3 (with nfsport= and mountport= if no
 * portmapper answers).
 *
 * Build: gcc -O2 -Wall -o nfspower nfspower.c -lnfs
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <nfsc/libnfs.h>

#define BLOCK 4096

static struct nfs_context *nfs;

static void die(const char *what)
{
	printf("ERR %s: %s\n", what, nfs_get_error(nfs));
	fflush(stdout);
	exit(2);
}

/* fill writes the content of file i (or log block i): a pattern no other
 * i shares. */
static size_t filesize(int i) { return 16384 + (i % 8) * 8192; }

static void fill(unsigned char *b, size_t n, int i, int salt)
{
	for (size_t j = 0; j < n; j++)
		b[j] = (unsigned char)(i * 31 + j * 7 + salt + (j >> 8));
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: nfspower write|check URL [files blocks]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	nfs = nfs_init_context();
	/* The first MOUNT makes the node's root (tree and identity, host
	 * keys included) inside an emulated head node that shares this
	 * machine's cores with other tests: give it two minutes, calls after
	 * it half a minute. */
	nfs_set_timeout(nfs, 120000);
	nfs_set_autoreconnect(nfs, 0);
	struct nfs_url *url = nfs_parse_url_dir(nfs, argv[2]);
	if (url == NULL)
		die("parse url");
	if (nfs_mount(nfs, url->server, url->path) != 0)
		die("mount");
	nfs_set_timeout(nfs, 30000);
	static unsigned char buf[131072], got[131072];
	if (strcmp(argv[1], "write") == 0) {
		struct nfsfh *log;
		if (nfs_creat(nfs, "/log", 0644, &log) != 0)
			die("create log");
		for (int i = 0;; i++) {
			char tmp[64], name[64];
			snprintf(tmp, sizeof tmp, "/f%d.tmp", i);
			snprintf(name, sizeof name, "/f%d", i);
			struct nfsfh *fh;
			if (nfs_creat(nfs, tmp, 0644, &fh) != 0)
				die("create");
			size_t n = filesize(i);
			fill(buf, n, i, 0);
			if (nfs_pwrite(nfs, fh, 0, n, buf) != (int)n)
				die("write");
			if (nfs_fsync(nfs, fh) != 0)
				die("commit");
			nfs_close(nfs, fh);
			if (nfs_rename(nfs, tmp, name) != 0)
				die("rename");
			printf("ACK file %d\n", i);
			fill(buf, BLOCK, i, 1);
			if (nfs_pwrite(nfs, log, (uint64_t)i * BLOCK, BLOCK, buf) != BLOCK)
				die("write log");
			if (nfs_fsync(nfs, log) != 0)
				die("commit log");
			printf("ACK log %d\n", i);
		}
	}
	if (strcmp(argv[1], "check") != 0 || argc < 5) {
		fprintf(stderr, "usage: nfspower check URL files blocks\n");
		return 2;
	}
	int files = atoi(argv[3]), blocks = atoi(argv[4]), bad = 0;
	for (int i = 0; i < files; i++) {
		char name[64];
		snprintf(name, sizeof name, "/f%d", i);
		struct nfsfh *fh;
		if (nfs_open(nfs, name, O_RDONLY, &fh) != 0) {
			printf("BAD %s: acknowledged, gone: %s\n", name, nfs_get_error(nfs));
			bad++;
			continue;
		}
		size_t n = filesize(i);
		fill(buf, n, i, 0);
		int r = nfs_pread(nfs, fh, 0, sizeof got, got);
		if (r != (int)n || memcmp(buf, got, n) != 0) {
			printf("BAD %s: %d bytes, want %zu as written\n", name, r, n);
			bad++;
		}
		nfs_close(nfs, fh);
	}
	struct nfsfh *log;
	if (blocks > 0 && nfs_open(nfs, "/log", O_RDONLY, &log) != 0) {
		printf("BAD log: %s\n", nfs_get_error(nfs));
		return 1;
	}
	for (int i = 0; i < blocks; i++) {
		fill(buf, BLOCK, i, 1);
		int r = nfs_pread(nfs, log, (uint64_t)i * BLOCK, BLOCK, got);
		if (r != BLOCK || memcmp(buf, got, BLOCK) != 0) {
			printf("BAD log block %d: %d bytes, not as committed\n", i, r);
			bad++;
		}
	}
	if (bad)
		return 1;
	printf("OK files=%d blocks=%d\n", files, blocks);
	return 0;
}
