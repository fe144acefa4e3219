//! Open connections to a listening address, read from `/proc/net`: how a slot that no longer
//! gets traffic is seen to have finished its requests in flight.

use std::path::Path;

/// How many established TCP connections have `port` as their local port (IPv4 and IPv6).
pub fn tcp_connections(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|table| count_tcp(&table, port))
        .sum()
}

/// In a `/proc/net/tcp` table: the rows in state ESTABLISHED (`01`) whose local address ends in
/// `port` (hexadecimal).
fn count_tcp(table: &str, port: u16) -> usize {
    let wanted = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let local_port = fields.get(1).and_then(|local| local.rsplit_once(':'));
            matches!(local_port, Some((_, p)) if p == wanted) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// How many connected stream sockets the unix socket `path` has accepted.
pub fn unix_connections(path: &Path) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return 0;
    };
    count_unix(&table, &path.to_string_lossy())
}

/// In `/proc/net/unix`: the rows of `path` in state connected (`03`); the listener is `01`.
fn count_unix(table: &str, path: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            fields.get(5) == Some(&"03") && fields.get(7) == Some(&path)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_rows_of_the_port_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 1 1\n\
   1: 0100007F:1F41 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  0 0 2 1\n\
   2: 0100007F:D2F0 0100007F:1F41 01 00000000:00000000 00:00000000 00000000  0 0 3 1\n\
   3: 0100007F:1F41 0100007F:D2F2 06 00000000:00000000 00:00000000 00000000  0 0 4 1\n";
        // 0x1F41 = 8001: the listener (0A), one established (01), one in TIME_WAIT (06); the
        // client's side of the connection has 8001 as its remote port, not its local one.
        assert_eq!(count_tcp(table, 8001), 1);
        assert_eq!(count_tcp(table, 8002), 0);
    }

    #[test]
    fn counts_connected_rows_of_the_socket_only() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/app/a.sock\n\
0000000000000000: 00000003 00000000 00000000 0001 03 101 /run/app/a.sock\n\
0000000000000000: 00000003 00000000 00000000 0001 03 102\n\
0000000000000000: 00000003 00000000 00000000 0001 03 103 /run/app/b.sock\n";
        assert_eq!(count_unix(table, "/run/app/a.sock"), 1);
        assert_eq!(count_unix(table, "/run/app/c.sock"), 0);
    }
}
