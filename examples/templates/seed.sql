-- The seed story of `relay demo` and of the end-to-end tests: one
-- organisation with three locations and five users (two ZOWI, one ZOLO, one
-- ZEWI, one ZELO), and a second organisation with a ZOWI and a ZOLO showing
-- that tenants never see each other's templates.
INSERT INTO public.orgs (id, name) VALUES ('org-1', 'Acme'), ('org-2', 'Globex');
INSERT INTO public.locations (id, org_id, name) VALUES
  ('loc-1', 'org-1', 'Berlin'), ('loc-2', 'org-1', 'Paris'), ('loc-3', 'org-1', 'Rome'),
  ('loc-9', 'org-2', 'Oslo');
INSERT INTO public.users (id, name, email, user_type, org_id, location_id) VALUES
  ('zowi-1', 'Olga', 'olga@acme.test',   'ZOWI', 'org-1', NULL),
  ('zowi-2', 'Omar', 'omar@acme.test',   'ZOWI', 'org-1', NULL),
  ('zolo-1', 'Lena', 'lena@acme.test',   'ZOLO', 'org-1', 'loc-1'),
  ('zewi-1', 'Emil', 'emil@acme.test',   'ZEWI', 'org-1', NULL),
  ('zelo-1', 'Elsa', 'elsa@acme.test',   'ZELO', 'org-1', 'loc-2'),
  ('zowi-9', 'Ivan', 'ivan@globex.test', 'ZOWI', 'org-2', NULL),
  ('zolo-9', 'Ines', 'ines@globex.test', 'ZOLO', 'org-2', 'loc-9');
