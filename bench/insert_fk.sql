INSERT INTO bench.fk (name, share_location_ids, created_by) VALUES ('Q3 menu', '{bench-loc-1,bench-loc-2}', 'bench-user');
