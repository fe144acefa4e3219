//! A small deterministic random generator (xorshift), shared by the tests and the benchmark,
//! so a failing series can be replayed from its seed.

#![allow(dead_code)]

pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "def ",
            "return ",
            "self",
            ".objects",
            "(request)",
            " = ",
            "import ",
            "class ",
            "\n",
            "    ",
            "if ",
            "for ",
            " in ",
            "None",
            "True",
            "models",
            "views",
            "{% block %}",
            "<div>",
            "</div>",
            "x",
            "y",
            "z",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let word = WORDS[(self.next() % WORDS.len() as u64) as usize];
            out.extend_from_slice(word.as_bytes());
            if self.next() % 7 == 0 {
                out.extend_from_slice(format!("{:x}", self.next() % 100_000).as_bytes());
            }
        }
        out.truncate(len);
        out
    }
}
